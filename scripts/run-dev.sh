#!/usr/bin/env bash
# `make run`: development PKI, the example OTA backend on 127.0.0.1:5000, a Mosquitto broker on
# 127.0.0.1:1884 that the backend announces uploads to, and qtls-server on
# https://localhost:8443 (HTTPS door) and localhost:8883 (MQTT door, tcp mode, in front of the
# broker); metrics on http://127.0.0.1:9091/metrics. Ctrl-C stops all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
# An operator's QTLS_DEV_DIR (a temp dir, say) is used as given; else ./run (or $RUN_DIR).
export QTLS_DEV_DIR="${QTLS_DEV_DIR:-$PWD/${RUN_DIR:-run}}"
mkdir -p "$QTLS_DEV_DIR/firmware"
[ -f "$QTLS_DEV_DIR/pki/ca-bundle.pem" ] || "$venv/bin/qproxy" pki init "$QTLS_DEV_DIR/pki" >/dev/null
config=etc/qtls/config/server.dev.json
"$venv/bin/qtls-server" --config "$config" --test-config

# The broker: a config file of our own, loopback only, so the Debian service (1883, if the
# package started one) neither serves nor blocks the example. As root Mosquitto would switch to
# the 'mosquitto' user; it reads nothing after start-up and keeps nothing (no persistence).
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
mqtt_port=1884
cat > "$QTLS_DEV_DIR/mosquitto.conf" <<CONF
listener $mqtt_port 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
CONF
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null; }
if listening; then
  echo "127.0.0.1:$mqtt_port is taken: stop what listens there (a make run still going?)" >&2
  exit 1
fi
"$mosquitto" -c "$QTLS_DEV_DIR/mosquitto.conf" &
broker=$!
trap 'kill "$broker" 2>/dev/null || true' EXIT
for _ in $(seq 50); do  # up to 5 s
  listening && break
  kill -0 "$broker" 2>/dev/null || { echo "mosquitto did not start" >&2; exit 1; }
  sleep 0.1
done

OTA_MQTT_HOST=127.0.0.1 OTA_MQTT_PORT=$mqtt_port OTA_PUBLIC_URL=https://localhost:8443 \
  "$venv/bin/python" -m examples.ota_backend --host 127.0.0.1 --port 5000 \
  --storage "$QTLS_DEV_DIR/firmware" &
backend=$!
trap 'kill "$backend" "$broker" 2>/dev/null || true' EXIT

ca=$QTLS_DEV_DIR/pki/ca-bundle.pem
cat <<EOT

qtls-server is starting on https://localhost:8443 (OTA backend on 127.0.0.1:5000) and on
localhost:8883 for MQTT (Mosquitto on 127.0.0.1:$mqtt_port).
Try it (another terminal, in $PWD):
  export QTLS_DEV_DIR=$QTLS_DEV_DIR
  $venv/bin/python -m examples.ota_device.subscribe --mqtt localhost:8883 --ca \$QTLS_DEV_DIR/pki/ca-bundle.pem &
  head -c 1048576 /dev/urandom > firmware.bin
  curl --cacert \$QTLS_DEV_DIR/pki/ca-bundle.pem -T firmware.bin https://localhost:8443/api/firmware/1.0.0
  $venv/bin/qproxy probe https://localhost:8443/api/firmware/latest --cafile \$QTLS_DEV_DIR/pki/ca-bundle.pem
  curl http://127.0.0.1:9091/metrics
  $venv/bin/qproxy status --config $config
The subscriber prints each upload's announcement, received over X25519MLKEM768; a classical
MQTT client gets it too: mosquitto_sub -h localhost -p 8883 --cafile $ca -t ota/update/available
Ctrl-C stops them all.

EOT
# In the background and waited for, so that a kill of this script (not only Ctrl-C, which
# reaches the whole process group) stops qtls-server too: bash runs no trap while a
# foreground command runs, and died leaving the server listening.
"$venv/bin/qtls-server" --config "$config" &
server=$!
stop() { kill "$server" "$backend" "$broker" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP
wait "$server"
