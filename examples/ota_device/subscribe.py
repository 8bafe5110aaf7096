"""``python -m examples.ota_device.subscribe --mqtt localhost:8883 --ca run/pki/ca-bundle.pem``

Prints every ``ota/update/available`` announcement, one per line, as received through
qtls-server's MQTT door over post-quantum TLS (the device's own context: X25519MLKEM768, an
ML-DSA-65 chain). The first line says what the handshake negotiated. Nothing is downloaded:
``python -m examples.ota_device --mqtt ...`` is the device that installs. Ctrl-C stops it."""

from __future__ import annotations

import argparse
import sys
import threading

from paho.mqtt import client as paho

from .__main__ import _host_port
from .agent import device_context
from .announcement import TOPIC
from .mqtt_tls import MqttTlsError, QTLSMqttClient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.ota_device.subscribe")
    parser.add_argument("--mqtt", required=True, type=_host_port, metavar="HOST:PORT",
                        help="qtls-server's MQTT door, e.g. localhost:8883")
    parser.add_argument("--ca", required=True, help="CA bundle (PEM) the server chains to")
    parser.add_argument("--server-name", help="TLS name to expect (default: HOST)")
    parser.add_argument("--count", type=int, help="Exit after this many messages")
    args = parser.parse_args(argv)
    host, port = args.mqtt
    client = QTLSMqttClient(device_context(args.ca), server_hostname=args.server_name)
    done = threading.Event()
    received = 0

    def on_message(_client: object, _userdata: object, message: paho.MQTTMessage) -> None:
        nonlocal received
        print(f"{message.topic} {message.payload.decode('utf-8', 'replace')}", flush=True)
        received += 1
        if args.count is not None and received >= args.count:
            done.set()

    client.on_connect = lambda c, *_: c.subscribe(TOPIC, qos=1)
    client.on_message = on_message
    try:
        client.connect(host, port, keepalive=60)
    except MqttTlsError as exc:
        print(f"cannot subscribe: {exc}", file=sys.stderr)
        return 1
    tls = client.tls_socket
    assert tls is not None
    print(f"# {host}:{port}: {tls.protocol_version} {tls.negotiated_group}, server chain "
          f"{' <- '.join(tls.peer_certificate_keys)}; waiting for {TOPIC}", flush=True)
    client.loop_start()
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
