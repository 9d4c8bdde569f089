#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real (make system-deps,
# called by make test):
#   chromium, fonts-dejavu-core  the dashboard's browser test (Playwright drives
#                                /usr/bin/chromium; it never downloads a browser)
#   fiu-utils                    fault injection into a real fedge serve (fsync
#                                failures: tests/aggregation_service/test_fsync_failure.py)
#   postgresql, haproxy          the scale-out tests: a throwaway PostgreSQL cluster
#                                (initdb/pg_ctl in a temporary directory) and HAProxy
#                                in front of ingest replicas, all on loopback
# Idempotent: installs only what is missing, and refreshes the package lists
# only when apt cannot find a package.
set -euo pipefail

# command that proves a package is there → package
declare -A NEEDS=(
    [/usr/bin/chromium]=chromium
    [/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf]=fonts-dejavu-core
    [/usr/bin/fiu-run]=fiu-utils
    [/usr/lib/postgresql/15/bin/initdb]=postgresql-15
    [/usr/sbin/haproxy]=haproxy
)

missing=()
for path in "${!NEEDS[@]}"; do
    [ -e "$path" ] || missing+=("${NEEDS[$path]}")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

export DEBIAN_FRONTEND=noninteractive
# A bare machine may have no package lists (or stale ones): update only then.
for pkg in "${missing[@]}"; do
    if ! apt-cache show "$pkg" >/dev/null 2>&1; then
        $SUDO apt-get update -q
        break
    fi
done
install() {
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
}
# Lists that name a package but are out of date point at files the archive
# no longer has: refresh them once and try again.
if ! install; then
    $SUDO apt-get update -q
    install
fi

for path in "${!NEEDS[@]}"; do
    if [ ! -e "$path" ]; then
        echo "system-deps: ${NEEDS[$path]} installed but $path is missing" >&2
        exit 1
    fi
done
