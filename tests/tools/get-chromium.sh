#!/usr/bin/env bash
# Headless Chromium and ChromeDriver for the browser tests (tests/test_web.py), as `make tools`
# gets promtool: a chromium and chromedriver on PATH are used as they are; otherwise Debian's
# packages, and the libraries they need that this system lacks, are fetched with `apt-get
# download` and unpacked under .venv (no root, nothing installed system-wide). Writes the
# wrappers BIN/chromium and BIN/chromedriver; BIN is the first argument (.venv/bin).
set -euo pipefail
bin=$(cd "$1" && pwd)
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  ln -sf "$(command -v chromium)" "$bin/chromium"
  ln -sf "$(command -v chromedriver)" "$bin/chromedriver"
  exit 0
fi
root=$(dirname "$bin")/chromium
tmp=$(mktemp -d)
chmod 755 "$tmp"  # apt-get download writes as its own user, _apt
trap 'rm -rf "$tmp"' EXIT
# What installing the two would add to this system, without recommends: exactly what is missing.
packages=$(apt-get -s install --no-install-recommends chromium chromium-driver | awk '/^Inst /{print $2}')
(cd "$tmp" && apt-get download $packages >/dev/null)
rm -rf "$root"
mkdir -p "$root"
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$root"; done
libs=$(find "$root/usr/lib" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)
wrap() {  # wrap NAME BINARY: run BINARY with the unpacked libraries found first
  printf '#!/bin/sh\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' \
    "$libs" "$2" > "$bin/$1"
  chmod +x "$bin/$1"
}
wrap chromium "$root/usr/lib/chromium/chromium"
wrap chromedriver "$root/usr/bin/chromedriver"
