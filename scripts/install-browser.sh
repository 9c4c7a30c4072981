#!/usr/bin/env bash
# Installs Debian's headless browser for the web page test (tests/test_server_web.py): chromium and its
# WebDriver, only when they are missing. Needs root (apt-get); elsewhere, install them by hand.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
command -v chromium >/dev/null && command -v chromedriver >/dev/null
