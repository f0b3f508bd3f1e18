#!/usr/bin/env bash
# The arena's C extension under AddressSanitizer + UndefinedBehaviorSanitizer:
# builds it into a separate directory (build-asan/, the normal build is left
# alone), then runs the unit, property and multiprocess arena tests against it
# with libasan preloaded into the (uninstrumented) Python interpreter.
# Any ASan report or UBSan finding aborts the process and fails the run.
#
#   bash scripts/sanitize.sh [extra pytest args]     (make sanitize)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/bootstrap.sh test
PY=.venv/bin/python
OUT=build-asan/tree  # a copy of the package and its tests: run from there, its fraiseshm comes first
rm -rf build-asan
mkdir -p "$OUT"
cp -r fraiseshm tests scripts pyproject.toml "$OUT/"
rm -f "$OUT"/fraiseshm/_native*.so
INC=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
SUFFIX=$($PY -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
gcc -shared -fPIC -g -O1 -std=gnu11 -Wall -Wextra -Werror \
    -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
    -I"$INC" native/_native.c -o "$OUT/fraiseshm/_native$SUFFIX" -lpthread
LIBASAN=$(gcc -print-file-name=libasan.so)
LIBUBSAN=$(gcc -print-file-name=libubsan.so)
echo "sanitized build: $OUT/fraiseshm/_native$SUFFIX (preloading $LIBASAN)"
# detect_leaks=0: CPython's own allocations at exit are not ours to judge.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1
PY=$PWD/$PY
cd "$OUT"
env LD_PRELOAD="$LIBASAN $LIBUBSAN" PYTHONPATH="$PWD" PYTHONMALLOC=malloc \
    $PY -c 'import fraiseshm._native as n; assert "build-asan" in n.__file__, n.__file__; print("loaded", n.__file__)'
env LD_PRELOAD="$LIBASAN $LIBUBSAN" PYTHONPATH="$PWD" PYTHONMALLOC=malloc \
    $PY -m pytest -q -p no:cacheprovider \
    tests/unit/test_arena.py tests/unit/test_arena_hardening.py tests/unit/test_arena_fuzz.py tests/unit/test_arena_layout.py \
    tests/unit/test_arena_optimistic.py \
    tests/property tests/multiprocess "$@"
echo "ASan + UBSan: clean"
