"""GraphiQL at GET /graphql for browsers: the page, its vendored assets, its CSP, and a headless
Chromium that loads it with no outside network, runs a query and shows the result."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from tests.integration.server import ROOT, Server

BROWSER_DIR = ROOT / "tests/browser"
SCRIPT = Path(__file__).with_name("graphiql_browser.mjs")
VENDORED = ROOT / "fraiseshm/http/static/graphiql"
OUTPUT = Path(os.environ.get("FRAISESHM_TEST_OUTPUT", ROOT / "tests/output")) / "graphiql"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.fixture(scope="module")
def server(pg_dsn: str) -> Iterator[Server]:
    with Server(pg_dsn, workers=2, tag="giql") as srv:
        yield srv


@pytest.fixture(scope="module")
def c(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def _page(c: httpx.Client) -> httpx.Response:
    return c.get("/graphql", headers={"Accept": BROWSER_ACCEPT})


def _assets(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/graphiql/[^"]+)"', page)


def test_a_browser_gets_the_page_with_a_strict_csp(c: httpx.Client) -> None:
    r = _page(c)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    csp = dict(d.strip().split(" ", 1) for d in r.headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'self'" and csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert csp["connect-src"] == "'self'" and csp["object-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
    assert "unsafe" not in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff" and "Accept" in r.headers["Vary"]
    # no inline script or style: every <script> has a src, no <style>, no style= attribute
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", r.text) == []
    assert "<style" not in r.text and "style=" not in r.text and "http" not in r.text
    assert len(_assets(r.text)) == 6


def test_api_clients_still_get_json(c: httpx.Client) -> None:
    for accept in ("*/*", "application/json", "application/json, text/html", "text/html;q=0.5, application/json"):
        r = c.get("/graphql", params={"query": "{ users(limit: 1) { id } }"}, headers={"Accept": accept})
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json"), accept
        assert "Accept" in r.headers["Vary"]
    assert c.get("/graphql", headers={"Accept": "*/*"}).status_code == 400  # as before: no query
    assert c.post("/graphql", json={"query": "{ users(limit: 1) { id } }"}, headers={"Accept": BROWSER_ACCEPT}).status_code == 200


def test_assets_are_the_vendored_npm_files(c: httpx.Client) -> None:
    sums = dict(reversed(line.split("  ")) for line in (VENDORED / "SHA256SUMS").read_text().splitlines())
    assert (VENDORED / "VERSIONS").read_text().splitlines()[0] == "graphiql 4.1.2"
    for url in _assets(_page(c).text):
        name = url.rsplit("/", 1)[1]
        r = c.get(url)
        assert r.status_code == 200 and r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert r.headers["Content-Type"].startswith("text/javascript" if name.endswith(".js") else "text/css")
        if name in sums:
            assert hashlib.sha256(r.content).hexdigest() == sums[name], name
        zipped = c.get(url, headers={"Accept-Encoding": "gzip"})
        assert zipped.headers["Content-Encoding"] == "gzip" and zipped.content == r.content  # httpx inflates


@pytest.mark.parametrize("path", [
    "/graphiql/0000000000000000/graphiql.min.js",  # another version
    "/graphiql/{v}/graphiql.LICENSE", "/graphiql/{v}/SHA256SUMS", "/graphiql/{v}/..%2f..%2fconfig.py",
    "/graphiql/{v}/%2e%2e", "/graphiql/{v}/../graphiql.py", "/graphiql/{v}", "/graphiql",
])
def test_only_the_page_assets_are_served(c: httpx.Client, path: str) -> None:
    version = _assets(_page(c).text)[0].split("/")[2]
    r = c.get(path.replace("{v}", version))
    assert r.status_code == 404 and r.json()["errors"][0]["extensions"]["code"] == "HTTP_ERROR"


def test_the_setting_turns_it_off(pg_dsn: str) -> None:
    with Server(pg_dsn, workers=1, tag="nogiql", env={"FRAISESHM_GRAPHIQL": "false"}) as srv, srv.client() as c:
        r = c.get("/graphql", headers={"Accept": BROWSER_ACCEPT})
        assert r.status_code == 400 and r.json()["errors"][0]["message"] == "GET /graphql needs a 'query' parameter"
        assert c.get("/graphiql/x/graphiql.min.js").status_code == 404
        r = c.get("/graphql", params={"query": "{ users(limit: 1) { id } }"})
        assert r.status_code == 200 and "Vary" not in r.headers


# --- headless Chromium ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright() -> Path:
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: `bash scripts/bootstrap.sh test` installs nodejs and npm")
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("/usr/bin/chromium is missing: `bash scripts/bootstrap.sh test` installs Debian's chromium")
    if not (BROWSER_DIR / "node_modules/playwright-core").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BROWSER_DIR, check=True, timeout=300)
    return BROWSER_DIR


def test_graphiql_in_chromium_runs_a_query_offline(server: Server, playwright: Path, tmp_path: Path,
                                                   pg_cluster: EmbeddedCluster) -> None:
    names = pg_cluster.psql("SELECT data->>'name' FROM v_user ORDER BY created_at, id LIMIT 2").splitlines()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    screenshot = OUTPUT / "graphiql.png"
    screenshot.unlink(missing_ok=True)
    env = {**os.environ, "BASE_URL": server.url, "BROWSER_DIR": str(playwright), "USER_DATA_DIR": str(tmp_path / "profile"),
           "SCREENSHOT": str(screenshot), "QUERY": "{ users(limit: 2) { id name } }", "EXPECT": names[1]}
    done = subprocess.run(["node", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in report, report
    assert report["status"] == 200 and "script-src 'self'" in report["csp"]
    assert report["outside"] == [], f"requests that left the server: {report['outside']}"
    assert report["violations"] == [], f"CSP violations: {report['violations']}"
    assert report["pageErrors"] == [] and report["consoleErrors"] == [], report
    assert "POST /graphql" in report["requests"]  # GraphiQL's introspection and the query
    assert all(name in report["result"] for name in names), report["result"]
    assert screenshot.stat().st_size > 10_000
    print(f"\nGraphiQL screenshot: {screenshot}; requests: {sorted(set(report['requests']))}")
