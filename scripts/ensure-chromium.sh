#!/usr/bin/env bash
# The browser tests drive Debian's Chromium through Playwright; browsers cannot be
# downloaded by Playwright here, so the distribution's package is installed.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "Chromium is missing: install Debian's package with 'sudo apt-get install chromium'" >&2
  exit 1
fi
echo "[ensure-chromium] installing Debian's chromium package" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
chromium --version >&2
