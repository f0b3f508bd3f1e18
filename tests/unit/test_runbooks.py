"""docs/runbooks/: every failure has a page with what to see, confirm, do and verify, and
every command on a page is real: `fraiseshm` subcommands parse with the CLI's own parser,
FRAISESHM_* names are settings, curl paths are routes of the app."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import msgspec
import pytest

from fraiseshm.cli import build_parser
from fraiseshm.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs/runbooks"
PAGES = sorted(p for p in RUNBOOKS.glob("*.md") if p.name != "README.md")
SETTINGS = {f.name for f in msgspec.structs.fields(Settings)}

REQUIRED = {"cascade-failures", "low-hit-rate", "arena-full", "shard-wipe", "database-down", "listener-gone",
            "replica-lag", "worker-restarts", "stale-read", "arena-unlinked", "qps-limits"}


def commands(text: str) -> list[str]:
    """Shell lines of ```sh blocks (continuations joined) and inline `...` spans."""
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.strip() for line in joined.splitlines() if line.strip()]
    lines += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return lines


def pipeline(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at |, ;, &&, comments dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set("|;&()"):
            out.append([])
        else:
            out[-1].append(token)
    return out


def test_every_known_failure_has_a_page() -> None:
    assert {p.stem for p in PAGES} == REQUIRED
    index = (RUNBOOKS / "README.md").read_text()
    for page in PAGES:
        assert f"]({page.name})" in index, f"{page.name} is not in docs/runbooks/README.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_page_has_symptoms_confirm_act_verify(page: Path) -> None:
    text = page.read_text()
    headings = re.findall(r"^## (\w+)", text, re.M)
    assert headings[0] in ("Symptoms", "Gather"), headings
    for section in ("Confirm", "Act", "Verify"):
        assert section in headings, f"{page.name}: no '## {section}' section"
    assert "```sh" in text.split("## Confirm")[1], f"{page.name}: Confirm gives no command"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_fraiseshm_commands_parse(page: Path) -> None:
    parser = build_parser()
    found = 0
    for line in commands(page.read_text()):
        for words in pipeline(line):
            if not words or words[0] != "fraiseshm":
                continue
            found += 1
            try:
                parser.parse_args(words[1:])
            except SystemExit as exc:
                raise AssertionError(f"{page.name}: `{shlex.join(words)}` is not a fraiseshm command") from exc
    if page.stem not in ("replica-lag", "database-down", "arena-unlinked"):
        assert found, f"{page.name} gives no fraiseshm command"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_settings_named_exist(page: Path) -> None:
    text = page.read_text()
    for name in set(re.findall(r"FRAISESHM_([A-Z0-9_]+)", text)):
        key = name.lower()
        if key == "config":
            continue
        if key.startswith("replica_") and "replica_dsns" not in SETTINGS:
            continue  # issue 18's settings, checked once its branch is merged
        assert key in SETTINGS, f"{page.name}: FRAISESHM_{name} is not a setting"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_curl_paths_are_routes(page: Path) -> None:
    from fraiseshm.http.app import create_app

    app = create_app(load_settings(environ={"FRAISESHM_ADMIN_TOKEN": "t" * 32}))
    for path in re.findall(r"localhost:8000(/[\w/]*)", page.read_text()):
        assert getattr(app, "app", app)._router.find(path) is not None, f"{page.name}: {path} is not a route"  # noqa: SLF001


def test_the_command_check_bites() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["audit", "--since", "1h"])
    assert "FRAISESHM_ARENA_BYTES"[len("FRAISESHM_"):].lower() not in SETTINGS
