#!/usr/bin/env bash
# The test command (README): install what the tests need on a fresh Debian machine,
# lint, then run the suite on SQLite and the database tests again on a real PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# Debian packages the real-component tests drive (servers, trackers, browser, load generator).
debs=(postgresql opentracker chromium chromium-driver wrk transmission-daemon transmission-cli aria2 rtorrent ffmpeg)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== Python environment (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

if [ -f tests/js/package.json ]; then
  echo "== npm packages for interoperability tests"
  (cd tests/js && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

echo "== lint (ruff, mypy)"
.venv/bin/ruff check swarmwatch tests migrations bench scripts
.venv/bin/ruff format --check swarmwatch tests migrations bench scripts
.venv/bin/mypy

run_pytest() {
  # Exit 5 means no test ran: that must fail, not pass silently.
  set +e
  .venv/bin/python -m pytest "$@"
  rc=$?
  set -e
  if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
  if [ $rc -ne 0 ]; then exit $rc; fi
}

echo "== tests on SQLite"
run_pytest -p no:cacheprovider

echo "== database tests on PostgreSQL"
pgdir=$(mktemp -d /tmp/swarmwatch-pg.XXXXXX)
chmod 755 "$pgdir"
trap 'scripts/postgres.sh stop "$pgdir"; rm -rf "$pgdir"' EXIT
url=$(scripts/postgres.sh start "$pgdir")
SWARMWATCH_TEST_DATABASE_URL="$url" run_pytest -p no:cacheprovider -m db
echo "== all tests passed (SQLite and PostgreSQL)"
