#!/usr/bin/env bash
# Install a PostgreSQL server for the shared-study tests (tests/experiments/sweep/), if none is installed.
# The tests start their own throw-away server (initdb + pg_ctl in a temporary folder, on a free localhost port,
# as the `postgres` user when run as root); this script only makes the binaries available. Needs root and apt-get
# (Debian/Ubuntu); anywhere else, install PostgreSQL (>= 12) yourself or put its bin/ folder on PATH.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_postgres.sh: no PostgreSQL server found and cannot install one (needs root and apt-get);" \
    "the PostgreSQL tests will fail under CI=true and be skipped elsewhere." >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends postgresql
# Debian's package starts a cluster on port 5432: the tests do not use it, so stop it.
if command -v pg_ctlcluster >/dev/null 2>&1; then
  pg_lsclusters --no-header 2>/dev/null | while read -r ver name _; do pg_ctlcluster "$ver" "$name" stop || true; done
fi
