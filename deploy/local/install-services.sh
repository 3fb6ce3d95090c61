#!/bin/sh
# Install PostgreSQL and Redis from Debian's packages, only when missing (idempotent).
# Nothing is started or enabled here: the distributed test harness starts private instances on
# loopback as needed (see tests/distributed/harness.py).
set -eu

need=""
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"

if [ -z "$need" ]; then
    echo "install-services: postgresql and redis-server already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-services: missing$need; run as root (or install them with your package manager)" >&2
    exit 1
fi

echo "install-services: installing$need"
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d: keep Debian's maintainer scripts from starting system-wide daemons; the harness
# runs its own private instances on loopback.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    created_policy=1
fi
trap '[ "$created_policy" -eq 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $need
