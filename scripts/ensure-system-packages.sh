#!/usr/bin/env bash
# Debian packages the tests drive for real: Chromium (browser tests, through Playwright, which
# cannot download browsers here) and docker-compose (validates docker/docker-compose.yml).
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "Missing Debian packages: ${missing[*]}; install them with 'sudo apt-get install ${missing[*]}'" >&2
  exit 1
fi
echo "[ensure-system-packages] installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
