#!/usr/bin/env bash
# Debian packages the test tiers need, installed only when missing (idempotent; needs root):
# Chromium for the browser tier here, PostgreSQL and Redis for the distributed tier through
# deploy/local/install-services.sh (which keeps Debian from starting system-wide daemons).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "system-deps: chromium is missing; run as root or install Debian's chromium" >&2
        exit 1
    fi
    echo "system-deps: installing chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
sh deploy/local/install-services.sh
