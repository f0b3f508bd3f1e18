"""Fault runner: does the suite catch a build that breaks a guarantee?

For each fault in faults/manifest.toml: copy the tree (tracked files, plus
the built C extension) to a scratch directory, apply faults/<name>.patch,
run the fault's tests there ``--runs`` times, and report per run whether a
test failed (caught) and which one. A patch that no longer applies is
reported as NOT APPLIED (and counts as a failure of the runner), never
skipped. A baseline run of the same tests on the unpatched copy comes first:
a test that fails without the fault proves nothing.

    .venv/bin/python faults/run.py                 # every fault, 3 runs each
    .venv/bin/python faults/run.py --runs 1 no_takeover ttl_ignored
    .venv/bin/python faults/run.py --source /work/main --build   # patches against another checkout

Not part of `make test` (pytest collects only tests/). Exit 0 only when every
patch applied and every run of every fault was caught.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUN_TIMEOUT = 900  # seconds for one pytest run of one fault's tests


@dataclass
class Outcome:
    name: str
    applied: bool = True
    apply_error: str = ""
    runs: list[list[str]] = field(default_factory=list)  # per run: the tests that failed (empty: missed)
    seconds: float = 0.0


def scratch_copy(source: Path) -> Path:
    """Tracked files of source (as they are in its working tree) and its built extension."""
    files = subprocess.run(["git", "-C", str(source), "ls-files", "-z"], check=True, capture_output=True).stdout
    dest = Path(tempfile.mkdtemp(prefix="fraiseshm-fault-"))
    for rel in filter(None, files.decode().split("\0")):
        src = source / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for so in glob.glob(str(source / "fraiseshm" / "_native*.so")):
        shutil.copy2(so, dest / "fraiseshm")
    os.chmod(dest, 0o755)  # the embedded PostgreSQL user may need to traverse it
    return dest


def apply(patch: Path, tree: Path, build: bool) -> str:
    """'' when applied, else git's complaint. Context lines around the changed line
    may have moved or changed since the patch was made: a second try needs only
    one line of context (the changed lines themselves must still match)."""
    for fuzz in ([], ["-C1"]):
        check = subprocess.run(["git", "apply", "--check", *fuzz, str(patch)], cwd=tree, capture_output=True, text=True)
        if check.returncode == 0:
            break
    else:
        return (check.stderr or check.stdout).strip()
    subprocess.run(["git", "apply", *fuzz, str(patch)], cwd=tree, check=True, capture_output=True)
    if fuzz:
        print(f"  note: {patch.name} applied with one line of context only: refresh it", flush=True)
    touches_native = any(line.startswith(("+++ b/native/", "--- a/native/")) for line in patch.read_text().splitlines())
    if build or touches_native or not glob.glob(str(tree / "fraiseshm" / "_native*.so")):
        build_extension(tree)
    return ""


def build_extension(tree: Path) -> None:
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, check=True, capture_output=True)


def run_tests(tree: Path, tests: list[str], report: Path) -> tuple[int, list[str], str]:
    """(pytest exit code, failed test ids with the first line of their failure, output tail)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}  # ahead of the editable install's finder
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", f"--junitxml={report}", *tests]
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        return 124, [f"(timed out after {RUN_TIMEOUT}s)"], ""
    failed = []
    if report.exists():
        for case in ET.parse(report).iter("testcase"):
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            if problem is not None:
                first = (problem.get("message") or "").strip().splitlines()
                failed.append(f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
                              f" ({first[0][:110] if first else problem.tag})")
    if proc.returncode != 0 and not failed:
        failed.append(f"(pytest exit {proc.returncode})")
    return proc.returncode, failed, (proc.stdout + proc.stderr)[-3000:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("faults", nargs="*", help="names from faults/manifest.toml (default: all)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout the patches apply to (default: this one)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unpatched run of each test set")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    parser.add_argument("--build", action="store_true",
                        help="build the C extension in each copy (default: copy the source's, build only if absent)")
    args = parser.parse_args()

    manifest = tomllib.loads((HERE / "manifest.toml").read_text())
    names = args.faults or list(manifest)
    unknown = [n for n in names if n not in manifest]
    if unknown:
        parser.error(f"unknown faults: {unknown}")
    orphans = sorted({p.stem for p in HERE.glob("*.patch")} - set(manifest))
    source = args.source.resolve()

    if not args.no_baseline:
        tests = sorted({t for n in names for t in manifest[n]["tests"]})
        tree = scratch_copy(source)
        try:
            if args.build or not glob.glob(str(tree / "fraiseshm" / "_native*.so")):
                build_extension(tree)
            code, failed, tail = run_tests(tree, tests, tree / "baseline.xml")
        finally:
            if not args.keep:
                shutil.rmtree(tree, ignore_errors=True)
        print(f"baseline (no fault, {len(tests)} tests): {'pass' if code == 0 else 'FAIL'}", flush=True)
        if code != 0:
            print("  the tests fail without any fault; results below would prove nothing:\n  " + "\n  ".join(failed))
            print(tail)
            return 2

    outcomes = []
    for name in names:
        entry = manifest[name]
        outcome = Outcome(name)
        started = time.monotonic()
        for run in range(args.runs):
            tree = scratch_copy(source)
            try:
                error = apply(HERE / f"{name}.patch", tree, args.build)
                if error:
                    outcome.applied, outcome.apply_error = False, error
                    break
                _, failed, _ = run_tests(tree, entry["tests"], tree / "report.xml")
                outcome.runs.append(failed)
            finally:
                if not args.keep:
                    shutil.rmtree(tree, ignore_errors=True)
            state = f"caught by {failed[0]}" if failed else "MISSED"
            print(f"{name} run {run + 1}/{args.runs}: {state}", flush=True)
        outcome.seconds = time.monotonic() - started
        if not outcome.applied:
            print(f"{name}: NOT APPLIED: {outcome.apply_error}", flush=True)
        outcomes.append(outcome)

    print("\nfault                             caught   breaks / caught by")
    ok = True
    for o in outcomes:
        if not o.applied:
            ok = False
            print(f"{o.name:<33} NOT APPLIED  (patch no longer applies: refresh faults/{o.name}.patch)")
            continue
        caught = sum(1 for r in o.runs if r)
        ok &= caught == len(o.runs)
        print(f"{o.name:<33} {caught}/{len(o.runs)}      {manifest[o.name]['breaks']}")
        for test in sorted({r[0] for r in o.runs if r}):
            print(f"{'':<42} {test}")
    for orphan in orphans:
        print(f"{orphan:<33} (patch without a manifest entry: not run)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
