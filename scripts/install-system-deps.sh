#!/usr/bin/env bash
# Debian/Ubuntu packages qproxy needs. Usage: install-system-deps.sh run|test
#   run:  curl, and python3 with venv unless the python3 on PATH already has it
#   test: + chromium (a real post-quantum browser for the end-to-end tests)
set -euo pipefail

want=(curl ca-certificates)
python3 -c 'import venv, ensurepip' 2>/dev/null || want+=(python3 python3-venv)
[ "${1:-run}" = test ] && want+=(chromium)

missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "install these packages with your system's package manager: ${missing[*]}" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
