#!/usr/bin/env bash
# `make run`: development PKI, the example OTA backend on 127.0.0.1:5000, and qtls-server on
# https://localhost:8443 (metrics on http://127.0.0.1:9091/metrics). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
export QTLS_DEV_DIR="$PWD/${RUN_DIR:-run}"
mkdir -p "$QTLS_DEV_DIR/firmware"
[ -f "$QTLS_DEV_DIR/pki/ca-bundle.pem" ] || "$venv/bin/qproxy" pki init "$QTLS_DEV_DIR/pki" >/dev/null
config=etc/qtls/config/server.dev.json
"$venv/bin/qtls-server" --config "$config" --test-config

"$venv/bin/python" -m examples.ota_backend --host 127.0.0.1 --port 5000 \
  --storage "$QTLS_DEV_DIR/firmware" &
backend=$!
trap 'kill "$backend" 2>/dev/null || true' EXIT

cat <<EOT

qtls-server is starting on https://localhost:8443 (OTA backend on 127.0.0.1:5000).
Try it (another terminal, in $PWD):
  export QTLS_DEV_DIR=$QTLS_DEV_DIR
  head -c 1048576 /dev/urandom > firmware.bin
  curl --cacert \$QTLS_DEV_DIR/pki/ca-bundle.pem -T firmware.bin https://localhost:8443/api/firmware/1.0.0
  $venv/bin/qproxy probe https://localhost:8443/api/firmware/latest --cafile \$QTLS_DEV_DIR/pki/ca-bundle.pem
  curl http://127.0.0.1:9091/metrics
  $venv/bin/qproxy status --config $config
Ctrl-C stops both.

EOT
"$venv/bin/qtls-server" --config "$config"
