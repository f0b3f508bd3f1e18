// Drives Debian's Chromium through playwright-core (tests/browser/node_modules) against
// the GraphiQL page of a running fraiseshm; prints one JSON report on stdout.
// Run by tests/integration/test_graphiql.py; env: BASE_URL, BROWSER_DIR, USER_DATA_DIR,
// SCREENSHOT, QUERY, EXPECT (a text the result must show).
import { createRequire } from "node:module";

const require = createRequire(process.env.BROWSER_DIR + "/package.json");
const { chromium } = require("playwright-core");

const base = new URL(process.env.BASE_URL);
const report = { outside: [], requests: [], violations: [], consoleErrors: [], pageErrors: [], result: "" };

const context = await chromium.launchPersistentContext(process.env.USER_DATA_DIR, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  // Every request the page makes is recorded; any not to the server is blocked and reported.
  await context.route("**/*", (route) => {
    const url = new URL(route.request().url());
    report.requests.push(`${route.request().method()} ${url.pathname}`);
    if (url.origin !== base.origin) {
      report.outside.push(url.href);
      return route.abort();
    }
    return route.continue();
  });
  // CSP violations as the page sees them (an init script runs outside the page's CSP).
  await context.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (e) => {
      window.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
    });
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (msg) => { if (msg.type() === "error") report.consoleErrors.push(msg.text()); });
  page.on("pageerror", (err) => report.pageErrors.push(String(err)));

  const response = await page.goto(`${base.origin}/graphql?query=${encodeURIComponent(process.env.QUERY)}`);
  report.status = response.status();
  report.csp = response.headers()["content-security-policy"] || "";
  await page.locator(".graphiql-container").waitFor({ timeout: 20000 });
  await page.locator(".graphiql-execute-button").click();
  await page.locator(".result-window").filter({ hasText: process.env.EXPECT }).waitFor({ timeout: 20000 });
  report.result = await page.locator(".result-window").innerText();
  await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  report.violations = await page.evaluate(() => window.__violations);
} catch (err) {
  report.error = String(err);
} finally {
  await context.close();
}
console.log(JSON.stringify(report));
