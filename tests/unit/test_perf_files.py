"""Every file under perf/ and deploy/ still loads, so none of them rots between `make perf` runs.

perf/: every module compiles, and all of them import together in a fresh
interpreter (locust monkey-patches the process with gevent on import, so not
in this one); no benchmark runs. The per-worker store's tag semantics are
checked here too, since the perf comparison is only fair if they match the
arena's. deploy/: the TOML converts to Settings, the systemd units parse,
the nginx sample declares its upstream, the rest is non-empty text.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

from fraiseshm.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
PERF = ROOT / "perf"
DEPLOY = ROOT / "deploy"
PERF_FILES = sorted(PERF.glob("*.py"))
DEPLOY_FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", PERF_FILES, ids=lambda p: p.name)
def test_perf_file_compiles(path: Path) -> None:
    compile(path.read_text(), str(path), "exec")


def test_perf_modules_import_without_running() -> None:
    names = [p.stem for p in PERF_FILES if p.stem != "__init__"]
    code = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(PERF)!r})\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print('imported', len(sys.modules))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}  # no FRAISESHM_* or PERF_* variables
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def test_local_store_has_the_arena_tag_semantics() -> None:
    sys.path.insert(0, str(PERF))
    try:
        from stores import LocalStore
    finally:
        sys.path.remove(str(PERF))
    now = [0.0]
    store = LocalStore(maxsize=4, timer=lambda: now[0])
    s0 = store.current_seq()
    assert store.put(b"k", b"v", ["User:1", "query:user"], s0, ttl=10)
    assert store.get(b"k") == b"v"
    store.invalidate(["User:2"])
    assert store.get(b"k") == b"v"  # another entity: still valid
    store.invalidate(["User:1"])
    assert store.get(b"k") is None
    assert not store.put(b"k", b"old", ["User:1"], s0, ttl=10)  # filled before the invalidation: refused
    s1 = store.current_seq()
    assert store.put(b"k", b"new", ["User:1"], s1, ttl=10)
    now[0] = 11.0
    assert store.get(b"k") is None  # TTL
    assert store.put(b"k", b"new", ["User:1"], s1, ttl=10)
    store.flush()
    assert store.get(b"k") is None


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_deploy_file_loads(path: Path) -> None:
    text = path.read_text()
    assert text.strip(), f"{path} is empty"
    if path.suffix == ".toml":
        settings = load_settings(path, environ={})
        assert isinstance(settings, Settings)
    elif path.suffix in (".service", ".socket", ".timer"):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
        unit.read_string(text, source=str(path))
        assert unit.has_section("Unit") and unit.has_section("Service")
        assert unit.get("Service", "ExecStart")
    elif path.name.endswith(".sysusers.conf"):
        lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert lines and all(line.split()[0] in {"u", "g", "m", "r"} for line in lines)
    elif path.parent.name == "nginx":
        assert "upstream" in text
    elif path.suffix in (".yml", ".yaml", ".json"):  # prometheus rules and their tests, grafana dashboards
        import json

        import yaml

        assert isinstance(json.loads(text) if path.suffix == ".json" else yaml.safe_load(text), dict)
    elif path.parent.name == "pgbouncer" and path.suffix == ".ini":
        ini = configparser.ConfigParser(strict=True, interpolation=None, inline_comment_prefixes=(";",))
        ini.read_string(text, source=str(path))  # duplicate keys or sections fail here
        assert ini.get("pgbouncer", "pool_mode") == "transaction" and ini.options("databases")
        assert all("pool_mode=" in ini.get("databases", db).replace(" ", "") for db in ini.options("databases"))
    else:
        assert path.suffix in {".md", ".sql"}, f"{path}: no loader for this kind of file; add one here"
