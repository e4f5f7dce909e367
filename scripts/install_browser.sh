#!/usr/bin/env bash
# Install Debian's Chromium for the web UI browser test (tests/test_web_demo.py).
#
#   sudo sh scripts/install_browser.sh     # or as root in CI
#
# Playwright drives it through `chromium.launch(executable_path=...)`; never run
# `playwright install` (it downloads its own browser build, which fails offline).
# Idempotent: returns at once when chromium is already on PATH.
set -eu

if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "error: installing chromium needs root; run: sudo sh $0" >&2
    exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-noto-cjk >/dev/null
echo "chromium installed: $(command -v chromium)"
