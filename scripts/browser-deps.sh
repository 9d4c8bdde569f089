#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's browser test (tests/dashboard).
# Playwright drives this browser through executable_path; it never downloads
# a browser build of its own. Idempotent: does nothing when chromium is there,
# and refreshes the package lists only when apt cannot find the package.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

export DEBIAN_FRONTEND=noninteractive
# A bare machine may have no package lists (or stale ones): update only then.
if ! apt-cache show chromium >/dev/null 2>&1; then
    $SUDO apt-get update -q
fi
install() {
    $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
}
# Lists that name the package but are out of date point at files the archive
# no longer has: refresh them once and try again.
if ! install; then
    $SUDO apt-get update -q
    install
fi

if [ ! -x "$CHROMIUM" ]; then
    echo "browser-deps: chromium installed but $CHROMIUM is missing" >&2
    exit 1
fi
