"""Headless Debian Chromium driven by playwright-core (tests/browser/apollo_driver.mjs).

``require_tools`` fails (never skips) with the command that installs what is
missing; ``npm_ci`` installs tests/browser/node_modules from the lock file when
it is missing or older than the lock. ``Driver`` runs the Node driver and talks
to it in JSON lines.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHROMIUM = Path("/usr/bin/chromium")
LOCK = HERE / "package-lock.json"
INSTALLED = HERE / "node_modules" / ".package-lock.json"  # written by npm ci / npm install


def require_tools() -> None:
    missing = [name for name, ok in (("chromium", CHROMIUM.exists()), ("nodejs", shutil.which("node")),
                                     ("npm", shutil.which("npm"))) if not ok]
    if missing:
        pytest.fail(f"browser tests need Debian packages {', '.join(missing)}: run "
                    f"`bash scripts/bootstrap.sh test` as root (or apt-get install -y {' '.join(missing)})",
                    pytrace=False)


def npm_ci() -> None:
    if INSTALLED.exists() and INSTALLED.stat().st_mtime >= LOCK.stat().st_mtime:
        return
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        pytest.fail(f"npm ci in tests/browser failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}", pytrace=False)


class Driver:
    """One run of apollo_driver.mjs: events() yields its JSON lines; reply() answers a pause."""

    def __init__(self, config: dict[str, Any], deadline: float = 600.0) -> None:
        self.proc = subprocess.Popen(
            ["node", str(HERE / "apollo_driver.mjs"), json.dumps({"chromium": str(CHROMIUM),
                                                                  "clientsDir": str(ROOT / "clients"), **config})],
            cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.log: list[dict[str, Any]] = []
        # Every wait in the driver is bounded; this bounds the driver itself (a hung Chromium).
        self._reaper = threading.Timer(deadline, self.proc.kill)
        self._reaper.daemon = True
        self._reaper.start()

    def next_event(self) -> dict[str, Any]:
        """The driver's next event other than console noise; it bounds every wait itself."""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(timeout=30)
                stderr = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"the browser driver ended (exit {self.proc.returncode}); its events: "
                                     f"{self.log[-5:]}; stderr: {stderr[-3000:]}")
            event = json.loads(line)
            self.log.append(event)
            if event["event"] in ("pageerror", "console"):
                continue
            if event["event"] == "failed":
                noise = [e for e in self.log if e["event"] in ("pageerror", "console")][-10:]
                raise AssertionError(f"the browser driver failed: {event['message']}; the pages said: {noise}")
            return event

    def expect(self, name: str) -> dict[str, Any]:
        event = self.next_event()
        assert event["event"] == name, f"expected the driver's {name!r}, got {event}"
        return event

    def reply(self, text: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        self._reaper.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cascade_selection(http: Any) -> str:
    """The cascade selection this server's schema accepts: `typename` (the spec) or `typeName`
    (before conformance), `entity` an object or a JSON scalar, typeInvalidations if present."""
    q = """{ e: __type(name: "UpdatedEntity") { fields { name type { kind ofType { kind } } } }
             d: __type(name: "DeletedEntity") { fields { name } }
             c: __type(name: "CascadeUpdates") { fields { name } }
             i: __type(name: "QueryInvalidation") { fields { name } } }"""
    data = http.post("/graphql", json={"query": q}).json()["data"]
    efields = {f["name"]: f for f in data["e"]["fields"]}
    name = "typename" if "typename" in efields else "typeName"
    entity_kind = efields["entity"]["type"]["kind"]
    if entity_kind == "NON_NULL":
        entity_kind = efields["entity"]["type"]["ofType"]["kind"]
    entity = "entity" if entity_kind == "SCALAR" else (
        "entity { __typename id ... on User { name email } ... on Post { title body } ... on Comment { body } }")
    dname = "typename" if "typename" in {f["name"] for f in data["d"]["fields"]} else "typeName"
    inv = [f for f in ("queryName", "arguments", "queryPattern", "strategy", "scope")
           if f in {x["name"] for x in data["i"]["fields"]}]
    parts = [f"updated {{ {name} id operation {entity} }}", f"deleted {{ {dname} id }}",
             f"invalidations {{ {' '.join(inv)} }}", "metadata { transactionId }"]
    if "typeInvalidations" in {f["name"] for f in data["c"]["fields"]}:
        parts.append("typeInvalidations { typename }")
    return "{ " + " ".join(parts) + " }"
