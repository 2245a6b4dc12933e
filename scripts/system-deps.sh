#!/usr/bin/env bash
# The system programs the test suite runs for real, never fakes (redis-server; Chromium and its driver for the
# console's browser tests): installs the missing ones where that can be done (root + apt-get, i.e. Debian/Ubuntu),
# otherwise stops with one line saying what to install.
# Called by `make test`; `make system-deps` runs it alone.
set -euo pipefail

# command -> Debian package
declare -A PACKAGE=(
    [redis-server]=redis-server
    [chromium]=chromium                # the console's browser tests (tests/server/test_console_browser.py)
    [chromedriver]=chromium-driver     # Selenium drives Chromium through it
)

missing_cmds=()
missing_pkgs=()
for cmd in "${!PACKAGE[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        missing_cmds+=("$cmd")
        missing_pkgs+=("${PACKAGE[$cmd]}")
    fi
done
[ ${#missing_cmds[@]} -eq 0 ] && exit 0

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing ${missing_pkgs[*]} (apt-get) for the test suite" >&2
    export DEBIAN_FRONTEND=noninteractive
    if apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null; then
        exit 0
    fi
    echo "make test: apt-get could not install ${missing_pkgs[*]}; install it, then run make test again" >&2
    exit 1
fi
echo "make test needs ${missing_cmds[*]}: install it first (Debian/Ubuntu: sudo apt-get install ${missing_pkgs[*]}; macOS: brew install redis chromium chromedriver)" >&2
exit 1
