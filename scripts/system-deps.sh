#!/usr/bin/env bash
# Debian packages for the browser (Chromium) and distributed (PostgreSQL, Redis) test tiers.
# Idempotent: installs only what is missing. Needs root (or passwordless sudo).
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
echo "system-deps: installing ${need[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
# the Debian postinst starts a cluster service on 5432; tests start their own on a free port
if command -v service >/dev/null 2>&1; then $SUDO service postgresql stop >/dev/null 2>&1 || true; fi
