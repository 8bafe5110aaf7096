#!/usr/bin/env bash
# Debian/Ubuntu packages qproxy needs. Usage: install-system-deps.sh run|test
#   run:  curl, mosquitto (the OTA example's MQTT broker), and python3 with venv unless the
#         python3 on PATH already has it
#   test: + chromium, nginx-light, libnginx-mod-stream, wrk (end-to-end tests and the
#         benchmarks; the stream module is nginx's TCP-mode peer in benchmarks/tcp_mode.py),
#         mosquitto-clients (mosquitto_sub: the classical-TLS MQTT client of the tests)
#   run and test: softhsm2 and pkcs11-provider (HSM keys; on Debian 12 from bookworm-backports)
set -euo pipefail

# mosquitto: `make run` and the tests start their own broker on 127.0.0.1 with a config file of
# their own; the Debian service the package enables (1883) is neither used nor needed.
want=(curl ca-certificates softhsm2 mosquitto)
python3 -c 'import venv, ensurepip' 2>/dev/null || want+=(python3 python3-venv)
# chromium: a real post-quantum browser; nginx-light and wrk: the peer and load tool of the
# benchmarks, whose harness the tests smoke-run.
[ "${1:-run}" = test ] && want+=(chromium nginx-light libnginx-mod-stream wrk mosquitto-clients)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for pkg in "${want[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
installed pkcs11-provider && provider_missing=0 || provider_missing=1
[ "${#missing[@]}" -eq 0 ] && [ "$provider_missing" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "install these packages with your system's package manager: ${missing[*]}" >&2
  exit 1
fi
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -E "$@"; fi; }
here=$(cd "$(dirname "$0")" && pwd)
provider_suite=""
if [ "$provider_missing" -eq 1 ]; then
  . /etc/os-release
  # pkcs11-provider 1.0 is in Debian 13's main suite; Debian 12 has it in backports.
  if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
    provider_suite=$(as_root "$here/enable-backports.sh")
  fi
fi
echo "installing Debian packages: ${missing[*]} $([ "$provider_missing" -eq 1 ] && echo pkcs11-provider)"
as_root apt-get update -qq
export DEBIAN_FRONTEND=noninteractive
if [ "${#missing[@]}" -gt 0 ]; then
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ "$provider_missing" -eq 1 ]; then
  as_root apt-get install -y -qq --no-install-recommends ${provider_suite:+-t "$provider_suite"} \
    pkcs11-provider >/dev/null
fi
