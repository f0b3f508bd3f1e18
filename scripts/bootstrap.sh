#!/usr/bin/env bash
# Installs what fraiseshm needs on a Debian machine, idempotently:
#   - PostgreSQL server binaries (+ contrib for pg_stat_statements), gcc, venv support
#   - a virtualenv in .venv with fraiseshm installed editable (builds the C extension)
# Usage: scripts/bootstrap.sh [extra]   (extra: test | perf | test,perf)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"

need_apt=()
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need_apt+=(postgresql postgresql-contrib)
compgen -G "/usr/lib/postgresql/*/lib/pg_stat_statements.so" >/dev/null || need_apt+=(postgresql-contrib)
command -v gcc >/dev/null || need_apt+=(gcc)
command -v make >/dev/null || need_apt+=(make)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
python3 -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' || need_apt+=(python3-dev)
if [[ ",$extras," == *",test,"* ]]; then
  # browser tests (tests/browser): Debian's Chromium driven by playwright-core from npm
  [[ -x /usr/bin/chromium ]] || need_apt+=(chromium)
  command -v node >/dev/null || need_apt+=(nodejs)
  command -v npm >/dev/null || need_apt+=(npm)
fi
if [[ ",$extras," == *",perf,"* ]]; then
  command -v redis-server >/dev/null || need_apt+=(redis-server)
  command -v wrk >/dev/null || need_apt+=(wrk)
fi
if ((${#need_apt[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bootstrap: missing Debian packages: ${need_apt[*]}; run: sudo apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
  echo "bootstrap: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian's postgresql package starts a system cluster we do not use.
  command -v pg_ctlcluster >/dev/null && (pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | while read -r v c; do pg_ctlcluster "$v" "$c" stop || true; done) || true
fi

stamp=".venv/.installed-${extras//,/-}"
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" || setup.py -nt "$stamp" || -n "$(find native -newer "$stamp" -type f 2>/dev/null | head -1)" ]]; then
  .venv/bin/pip install -q --disable-pip-version-check -U pip setuptools wheel
  .venv/bin/pip install -q --disable-pip-version-check -e ".[${extras}]"
  touch "$stamp"
fi
