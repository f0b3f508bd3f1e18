// Drives Debian's Chromium (playwright-core) for tests/browser/test_apollo_cascade.py.
//
//   node apollo_driver.mjs '<json config>'
//
// The page is served by this driver, not by fraiseshm: every request for
// <server>/app/* is answered from disk (the page, clients/, node_modules/), so
// the page shares fraiseshm's origin while /graphql and /graphql/ws reach the
// real server. Talks to the Python test in JSON lines: it prints
// {"event": ...} and, where the test must act (a plain SQL UPDATE), waits for
// one line on stdin.

import { readFileSync, existsSync, statSync, readdirSync } from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { chromium } from "playwright-core";

const cfg = JSON.parse(process.argv[2]);
const HERE = path.dirname(new URL(import.meta.url).pathname);
const MODULES = path.join(HERE, "node_modules");
const stdin = readline.createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();

function within(promise, ms, what) {
  let timer;
  const limit = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms); });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function waitForTest() {
  const { value, done } = await lines.next();
  if (done) throw new Error("the test closed stdin");
  return value;
}

// --- import map: bare specifiers -> files under /app/node_modules --------------------

const CONDITIONS = ["browser", "production", "module", "es2015", "import", "default"];

function pick(target) {
  if (typeof target === "string") return target;
  if (!target || typeof target !== "object") return null;
  for (const c of CONDITIONS) {
    if (c in target) {
      const got = pick(target[c]);
      if (got) return got;
    }
  }
  return null;
}

function packages() {
  const names = [];
  for (const entry of readdirSync(MODULES)) {
    if (entry.startsWith(".")) continue;
    if (entry.startsWith("@")) {
      for (const sub of readdirSync(path.join(MODULES, entry))) names.push(`${entry}/${sub}`);
    } else names.push(entry);
  }
  return names;
}

function importMap() {
  const imports = {};
  for (const name of packages()) {
    const dir = path.join(MODULES, name);
    const pkgFile = path.join(dir, "package.json");
    if (!existsSync(pkgFile)) continue;
    const pkg = JSON.parse(readFileSync(pkgFile, "utf8"));
    const base = `/app/node_modules/${name}/`;
    if (pkg.exports && typeof pkg.exports === "object" && Object.keys(pkg.exports).some((k) => k.startsWith("."))) {
      for (const [key, target] of Object.entries(pkg.exports)) {
        if (key.includes("*")) continue;
        const file = pick(target);
        if (!file || !file.match(/\.(m?js)$/)) continue;
        const spec = key === "." ? name : `${name}/${key.slice(2)}`;
        imports[spec] = base + file.replace(/^\.\//, "");
      }
    }
    if (!imports[name]) {
      const entry = pkg.module || pkg.main;
      if (entry) imports[name] = base + entry.replace(/^\.\//, "");
    }
    imports[`${name}/`] = base;
  }
  return { imports };
}

const TYPES = { ".html": "text/html", ".mjs": "text/javascript", ".js": "text/javascript", ".json": "application/json",
  ".cjs": "text/javascript", ".map": "application/json" };

function fileFor(urlPath) {
  const rel = urlPath.replace(/^\/app\//, "");
  let file;
  if (rel.startsWith("node_modules/")) file = path.join(MODULES, rel.slice("node_modules/".length));
  else if (rel.startsWith("clients/")) file = path.join(cfg.clientsDir, rel.slice("clients/".length));
  else if (rel.startsWith("apollo/")) file = path.join(HERE, "apollo", rel.slice("apollo/".length));
  else return null;
  const root = [MODULES, cfg.clientsDir, path.join(HERE, "apollo")].find((r) => file.startsWith(r + path.sep));
  if (!root) return null;
  if (existsSync(file) && statSync(file).isFile()) return { file };
  // Bundler-style specifiers (rxjs' "./internal/operators/zipWith"): the file's content at that
  // URL (its relative imports resolve in the same directory). Playwright does not route the
  // request a redirect makes, so a directory's index is not supported.
  for (const suffix of [".js", ".mjs"]) {
    if (existsSync(file + suffix) && statSync(file + suffix).isFile()) return { file: file + suffix };
  }
  return null;
}

// --- the browser ----------------------------------------------------------------------

const MAP = JSON.stringify(importMap());
const requests = { A: [], B: [] };

async function openTab(context, tab) {
  const page = await context.newPage();
  page.on("request", (req) => {
    const url = new URL(req.url());
    if (url.pathname === "/graphql" && req.method() === "POST") {
      let op = "?";
      try { op = JSON.parse(req.postData() || "{}").operationName || "?"; } catch (err) { /* not JSON */ }
      requests[tab].push(op);
    }
  });
  page.on("pageerror", (err) => emit({ event: "pageerror", tab, message: String(err) }));
  page.on("requestfailed", (req) => emit({ event: "console", tab, text: `request failed: ${req.url()}` }));
  page.on("response", (res) => {
    if (res.status() >= 400) emit({ event: "console", tab, text: `HTTP ${res.status()}: ${res.url()}` });
  });
  page.on("console", (msg) => { if (msg.type() === "error") emit({ event: "console", tab, text: msg.text() }); });
  const pageCfg = { ...cfg.page, tab, push: cfg.push };
  await page.goto(`${cfg.server}/app/apollo/index.html?cfg=${encodeURIComponent(JSON.stringify(pageCfg))}`);
  try {
    await page.waitForFunction(() => window.app && window.app.ready(), null, { timeout: 20000 });
  } catch (err) {
    const body = await page.evaluate(() => document.body.innerText).catch((e) => String(e));
    throw new Error(`tab ${tab} did not load: ${String(err).split("\n")[0]}; the page shows: ${body.slice(0, 1500)}`);
  }
  if (cfg.push) {
    try {
      await page.waitForFunction(() => window.app.subscribed(), null, { timeout: 10000 });
    } catch (err) {
      const status = await page.evaluate(() => document.getElementById("status").textContent);
      throw new Error(`tab ${tab} did not subscribe to cascadeUpdates: ${status}`);
    }
  }
  return page;
}

async function settle(page, predicate, arg, timeout) {
  await page.waitForFunction(predicate, arg, { timeout });
  await page.waitForFunction(() => window.app.idle() && window.app.ready(), null, { timeout });
}

const browser = await chromium.launch({
  executablePath: cfg.chromium,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         // The page's response comes from the driver (route.fulfill), which Chromium places in no
         // address space: its WebSocket to 127.0.0.1 would count as public -> loopback and be blocked.
         "--disable-features=LocalNetworkAccessChecks"],
});
let exitCode = 0;
try {
  const context = await browser.newContext({ viewport: { width: 900, height: 900 } });
  await context.route(`${cfg.server}/app/**`, async (route) => {
    const url = new URL(route.request().url());
    const found = fileFor(url.pathname);
    if (!found) return route.fulfill({ status: 404, body: "not found" });
    const file = found.file;
    let body = readFileSync(file);
    if (file.endsWith("index.html")) {
      body = body.toString().replace("<!--IMPORTMAP-->", `<script type="importmap">${MAP}</script>`);
    }
    return route.fulfill({ status: 200, body, contentType: TYPES[path.extname(file)] || "application/octet-stream" });
  });
  const A = await openTab(context, "A");
  const B = await openTab(context, "B");
  emit({ event: "loaded", requests: structuredClone(requests) });

  if (cfg.mode === "scenario") {
    const before = { A: requests.A.length, B: requests.B.length };
    await within(A.evaluate((id) => window.app.deleteUser(id), cfg.page.victim), cfg.timeoutMs, "deleteUser");
    await within(A.evaluate(([id, title]) => window.app.updatePost(id, title), [cfg.page.postId, cfg.newTitle]),
                 cfg.timeoutMs, "updatePost");
    const shows = ([victim, title]) => {
      const s = window.app.state();
      return s.users && !s.users.users.some((u) => u.id === victim) && s.victimPosts && s.victimPosts.posts.length === 0
        && s.post && s.post.post && s.post.post.title === title;
    };
    const waits = { A: "ok", B: "ok" };
    for (const [tab, page] of [["A", A], ["B", B]]) {
      try {
        await settle(page, shows, [cfg.page.victim, cfg.newTitle], cfg.timeoutMs);
      } catch (err) {
        waits[tab] = `timed out: ${String(err).split("\n")[0]}`;
      }
    }
    const afterMutations = { A: requests.A.slice(before.A), B: requests.B.slice(before.B) };
    emit({ event: "mutated", waits, requests: afterMutations,
           state: { A: await A.evaluate(() => window.app.state()), B: await B.evaluate(() => window.app.state()) },
           applied: { A: await A.evaluate(() => window.app.applied()), B: await B.evaluate(() => window.app.applied()) } });

    emit({ event: "need-sql" });
    await waitForTest();
    const beforeSql = { A: requests.A.length, B: requests.B.length };
    const renamed = ([id, name]) => {
      const s = window.app.state();
      return s.users && s.users.users.some((u) => u.id === id && u.name === name);
    };
    const sqlWaits = { A: "ok", B: "ok" };
    for (const [tab, page] of [["A", A], ["B", B]]) {
      try {
        await settle(page, renamed, [cfg.page.renamed, cfg.newName], cfg.timeoutMs);
      } catch (err) {
        sqlWaits[tab] = `timed out: ${String(err).split("\n")[0]}`;
      }
    }
    const shots = {};
    for (const [tab, page] of [["A", A], ["B", B]]) {
      shots[tab] = path.join(cfg.outDir, `tab-${tab}.png`);
      await page.screenshot({ path: shots[tab], fullPage: true });
    }
    emit({ event: "sql-applied", waits: sqlWaits,
           requests: { A: requests.A.slice(beforeSql.A), B: requests.B.slice(beforeSql.B) },
           state: { A: await A.evaluate(() => window.app.state()), B: await B.evaluate(() => window.app.state()) },
           screenshots: shots });
  } else if (cfg.mode === "latency") {
    const results = [];
    for (let i = 0; i < cfg.n; i += 1) {
      const title = `latency ${i} ${Date.now()}`;
      const sent = await A.evaluate(() => performance.timeOrigin + performance.now());
      const { at } = await within(A.evaluate(([id, t]) => window.app.updatePost(id, t), [cfg.page.postId, title]),
                                  cfg.timeoutMs, "updatePost");
      const seen = await B.waitForFunction((t) => {
        const hit = window.app.applied().find((a) => a.source === "push" && a.titles.includes(t));
        return hit ? hit.at : false;
      }, title, { timeout: cfg.timeoutMs });
      results.push({ sent, response: at, pushed: await seen.jsonValue() });
    }
    emit({ event: "latency", results });
  }
} catch (err) {
  emit({ event: "failed", message: String(err && err.stack || err) });
  exitCode = 1;
} finally {
  await browser.close();
  stdin.close();
}
process.exit(exitCode);
