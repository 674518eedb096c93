#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for the operator console's browser test
# (tests/console.rs) when /usr/bin/chromium is missing. Needs apt-get and root (or sudo).
# CHROMIUM may point at another Chromium binary; then nothing is installed.
set -euo pipefail
if [ -n "${CHROMIUM:-}" ] && [ -x "${CHROMIUM}" ]; then
  exit 0
fi
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
command -v apt-get >/dev/null || { echo "fetch-chromium: no apt-get; install Chromium and set CHROMIUM=/path/to/chromium" >&2; exit 1; }
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "fetch-chromium: run as root or install sudo (apt-get install chromium)" >&2; exit 1; }
  sudo=sudo
fi
echo "fetch-chromium: installing Debian's chromium (headless browser test of the console)" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium
test -x /usr/bin/chromium
