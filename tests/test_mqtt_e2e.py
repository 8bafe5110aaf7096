"""The OTA system's MQTT door end to end (issue 14): the OTA backend announces an upload to a
real Mosquitto on 127.0.0.1, and subscribers reach that broker only through qtls-server's tcp
listener — a device over X25519MLKEM768 (paho on qproxy.qtls), and `mosquitto_sub` over
classical TLS (OpenSSL 3.0) while the listener allows it, refused once it sets require_pq."""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from examples.ota_device.agent import device_context
from examples.ota_device.mqtt_tls import MqttTlsError, QTLSMqttClient
from qproxy.qtls import QTLS_CLIENT_MODE, QTLS_OP_CLASSICAL_ONLY, QTLSContext
from tests.conftest import make_config
from tests.support.harness import ROOT, child_env, free_port
from tests.support.mosquitto import (  # noqa: F401
    MOSQUITTO_SUB, Subscriber, plain_client, start_broker,
)
from tests.test_mqtt_notify import OtaBackend

TOPIC = "ota/update/available"


class OtaStack:
    """Mosquitto + the OTA backend announcing to it + qtls-server with the HTTPS door (default
    listener) and the MQTT door (listener "mqtt", mode tcp, upstream "mosquitto")."""

    def __init__(self, broker, backend: OtaBackend, server, https_port: int) -> None:
        self.broker, self.backend, self.server = broker, backend, server
        self.https_port = https_port
        self.mqtt_port: int = server.events("listening")[0]["listeners"]["mqtt"]


@pytest.fixture
def ota_stack(start_broker, start_server, dev_pki, tmp_path):
    backends: list[OtaBackend] = []

    def start(mqtt_tls: dict | None = None,
              mqtt_certificates: dict | None = None) -> OtaStack:
        broker = start_broker()
        https_port = free_port()
        backend = OtaBackend(tmp_path / "firmware", "--mqtt-host", "127.0.0.1", "--mqtt-port",
                             str(broker.port), "--public-url", f"https://localhost:{https_port}")
        backends.append(backend)
        mqtt_listener = {"name": "mqtt", "mode": "tcp", "listen_address": "127.0.0.1",
                         "listen_port": 0, "upstream": "mosquitto"}
        if mqtt_tls is not None:
            mqtt_listener["tls"] = mqtt_tls
        if mqtt_certificates is not None:
            mqtt_listener["certificates"] = mqtt_certificates
        config = make_config(
            dev_pki, f"127.0.0.1:{backend.port}",
            server={"listen_port": https_port},
            upstreams={"mosquitto": {"servers": [broker.address], "connect_timeout": 2}},
            routes=[{"path_prefix": "/", "upstream": "app"}],
            listeners=[mqtt_listener])
        return OtaStack(broker, backend, start_server(config), https_port)

    yield start
    for backend in backends:
        backend.stop()


@pytest.fixture
def subscribers():
    made: list[Subscriber] = []
    yield made
    for subscriber in made:
        subscriber.close()


def test_an_upload_reaches_a_device_over_x25519mlkem768(ota_stack, dev_pki, subscribers):
    stack = ota_stack()
    client = QTLSMqttClient(device_context(str(dev_pki.ca_bundle)), server_hostname="localhost",
                            client_id="device-1")
    subscribers.append(Subscriber(client, "127.0.0.1", stack.mqtt_port))
    tls = client.tls_socket
    assert tls.negotiated_group == "X25519MLKEM768"
    assert tls.peer_certificate_keys == ["ML-DSA-65", "ML-DSA-65"]
    image = os.urandom(100_000)
    assert stack.backend.upload("2.1.0", image)[0] == 201
    got = subscribers[0].message_for("2.1.0")
    assert got["qos"] == 1 and got["topic"] == TOPIC
    assert got["payload"] == {
        "version": "2.1.0", "size": len(image), "sha256": hashlib.sha256(image).hexdigest(),
        "url": f"https://localhost:{stack.https_port}/api/firmware/2.1.0/download"}
    # The broker saw the device come in through the door, from qtls-server's side.
    assert stack.broker.wait_log(lambda line: "device-1" in line and "New client" in line)


def signed_image(tmp_path: Path) -> tuple[Path, Path, str]:
    """A random image signed by a fresh ML-DSA-65 key: (image, signature, key id)."""
    key = tmp_path / "signer.pem"
    subprocess.run([sys.executable, "-m", "qproxy", "firmware", "keygen", "--out", str(key)],
                   cwd=ROOT, env=child_env(), check=True, capture_output=True, timeout=60)
    image = tmp_path / "app.bin"
    image.write_bytes(os.urandom(300_000))
    meta = json.loads(subprocess.run(
        [sys.executable, "-m", "qproxy", "firmware", "sign", str(image), "--key", str(key)],
        cwd=ROOT, env=child_env(), check=True, capture_output=True, text=True,
        timeout=60).stdout)
    return image, tmp_path / "app.bin.sig", meta["key_id"]


def start_device(stack: OtaStack, ca: Path, tmp_path: Path) -> subprocess.Popen[str]:
    """python -m examples.ota_device --mqtt ... --once, subscribed when this returns."""
    install = tmp_path / "device"
    install.mkdir()
    device = subprocess.Popen(
        [sys.executable, "-m", "examples.ota_device", "--server", f"localhost:{stack.https_port}",
         "--ca", str(ca), "--signer", str(tmp_path / "signer.pub.pem"),
         "--install", str(install), "--mqtt", f"localhost:{stack.mqtt_port}", "--once",
         "--timeout", "60"],
        cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not stack.broker.wait_log(lambda line: line.endswith(f" {TOPIC}"), timeout=30):
        device.kill()
        _, err = device.communicate(timeout=10)
        raise AssertionError(f"the device did not subscribe: {err}")
    return device


def read_stderr_until(process: subprocess.Popen[str], text: str, timeout: float = 30.0) -> str:
    """What `process` wrote on stderr up to a line holding `text` (bounded wait)."""
    assert process.stderr is not None
    # Raw reads on the descriptor: the text wrapper's buffer could hide a line from select().
    fd = process.stderr.fileno()
    deadline = time.monotonic() + timeout
    seen = b""
    while text.encode() not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise AssertionError(f"no {text!r} on stderr within {timeout}s: {seen!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"stderr ended before {text!r}: {seen!r}")
        seen += chunk
    return seen.decode()


def finish(device: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return device.communicate(timeout=90)
    finally:
        device.kill()
        device.wait(10)


def test_the_device_example_installs_what_is_announced(ota_stack, dev_pki, tmp_path):
    """python -m examples.ota_device --mqtt: announcement over PQ MQTT, download over PQ
    HTTPS, SHA-256 and ML-DSA signature checked, image installed."""
    stack = ota_stack()
    image, signature, key_id = signed_image(tmp_path)
    device = start_device(stack, dev_pki.ca_bundle, tmp_path)
    # The image alone is announced (and refused: not signed yet), then again with its
    # signature, which the device installs.
    assert stack.backend.upload("1.4.0", image.read_bytes())[0] == 201
    refused = read_stderr_until(device, "firmware 1.4.0 is not signed by the trusted key")
    assert stack.backend.put_signature("1.4.0", signature.read_bytes(), key_id) == 201
    out, err = finish(device)
    assert device.returncode == 0, refused + err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["status"] == "installed" and report["version"] == "1.4.0"
    assert report["group"] == "X25519MLKEM768"
    assert (tmp_path / "device" / "firmware-1.4.0.bin").read_bytes() == image.read_bytes()


def test_forged_announcements_are_refused_and_the_device_listens_on(ota_stack, dev_pki,
                                                                    tmp_path):
    """Whoever can publish on the broker cannot make the device fetch from elsewhere or
    accept another image: each forged message is refused with its reason, nothing is
    installed, and the genuine announcement after them is."""
    stack = ota_stack()
    image, signature, key_id = signed_image(tmp_path)
    assert stack.backend.upload("1.4.0", image.read_bytes())[0] == 201
    assert stack.backend.put_signature("1.4.0", signature.read_bytes(), key_id) == 201
    genuine = {"version": "1.4.0", "size": 300_000,
               "sha256": hashlib.sha256(image.read_bytes()).hexdigest(),
               "url": f"https://localhost:{stack.https_port}/api/firmware/1.4.0/download"}
    # Clear the retained genuine announcement: the device must meet the forgeries first.
    forger = plain_client()
    forger.connect("127.0.0.1", stack.broker.port)
    forger.loop_start()
    try:
        forger.publish(TOPIC, b"", qos=1, retain=True).wait_for_publish(10)
        device = start_device(stack, dev_pki.ca_bundle, tmp_path)
        for forged in (b"{not json",
                       json.dumps({**genuine, "url": "https://evil.example:8443/fw.bin"}),
                       json.dumps({**genuine, "sha256": "00" * 32}),
                       json.dumps({**genuine, "size": 1000}),
                       json.dumps(genuine)):
            forger.publish(TOPIC, forged, qos=1).wait_for_publish(10)
        out, err = finish(device)
    finally:
        forger.disconnect()
        forger.loop_stop()
    assert device.returncode == 0, err
    assert "bad announcement on ota/update/available: the message is not JSON" in err
    assert "is not on the update server" in err
    assert f"says SHA-256 {'00' * 32}, the server's metadata {genuine['sha256']}" in err
    assert "GET /api/firmware/1.4.0/download: the response body (300000 bytes) is larger " \
        "than 1000" in err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "installed"
    assert [p.name for p in (tmp_path / "device").iterdir()] == ["firmware-1.4.0.bin"]


def mosquitto_sub(port: int, ca_file: Path, *extra: str) -> subprocess.Popen[str]:
    if MOSQUITTO_SUB is None:
        pytest.skip("mosquitto_sub is not installed (Debian package mosquitto-clients)")
    return subprocess.Popen(
        [MOSQUITTO_SUB, "-h", "localhost", "-p", str(port), "--cafile", str(ca_file),
         "-t", TOPIC, "-q", "1", "-C", "1", "-W", "30", "-i", "classical-sub", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_mosquitto_sub_over_classical_tls_gets_the_announcement(ota_stack, dev_pki):
    stack = ota_stack()
    sub = mosquitto_sub(stack.mqtt_port, dev_pki.ca_bundle)
    try:
        assert stack.broker.wait_log(lambda line: "classical-sub" in line, timeout=30), \
            sub.stderr.read() if sub.poll() is not None else "mosquitto_sub did not connect"
        assert stack.backend.upload("5.0.0", b"classical door")[0] == 201
        out, err = sub.communicate(timeout=40)
    finally:
        sub.kill()
        sub.wait(10)
    assert sub.returncode == 0, err
    assert json.loads(out)["version"] == "5.0.0"
    # OpenSSL 3.0 has no ML-KEM: the door let it in on a classical group, and logged so.
    session = stack.server.wait_log(lambda e: e.get("event") == "session"
                                    and e.get("listener") == "mqtt")
    assert session is not None, "\n".join(stack.server.raw[-5:])
    assert session["ssl_curve"] == "X25519" and session["ssl_sigalg"].startswith("ecdsa")


def test_require_pq_refuses_classical_clients_and_admits_the_device(ota_stack, dev_pki,
                                                                    subscribers):
    stack = ota_stack(mqtt_tls={"hybrid_mode": True, "require_pq": True})
    sub = mosquitto_sub(stack.mqtt_port, dev_pki.ca_bundle)
    try:
        out, err = sub.communicate(timeout=40)
    finally:
        sub.kill()
        sub.wait(10)
    assert sub.returncode != 0 and not out
    refused = stack.server.wait_log(lambda e: e.get("event") == "handshake failed")
    assert refused is not None and refused["reason"] == "no suitable key share"
    assert stack.broker.wait_log(lambda line: "classical-sub" in line, timeout=1) is None
    classical = QTLSContext(mode=QTLS_CLIENT_MODE)
    classical.load_verify_locations(str(dev_pki.ca_bundle))
    classical.set_options(QTLS_OP_CLASSICAL_ONLY)
    classical.set_kem_algorithms(["x25519", "ecdhe-p384"])
    with pytest.raises(MqttTlsError, match="TLS to"):
        QTLSMqttClient(classical, server_hostname="localhost").connect("127.0.0.1",
                                                                       stack.mqtt_port)
    client = QTLSMqttClient(device_context(str(dev_pki.ca_bundle)), server_hostname="localhost")
    subscribers.append(Subscriber(client, "127.0.0.1", stack.mqtt_port))
    assert client.tls_socket.negotiated_group == "X25519MLKEM768"
    assert stack.backend.upload("6.0.0", b"pq only")[0] == 201
    assert subscribers[0].message_for("6.0.0")["payload"]["size"] == 7


def test_the_subscribe_command_make_run_prints(ota_stack, dev_pki):
    """`python -m examples.ota_device.subscribe`: the one-line post-quantum subscriber."""
    stack = ota_stack()
    sub = subprocess.Popen(
        [sys.executable, "-m", "examples.ota_device.subscribe", "--mqtt",
         f"localhost:{stack.mqtt_port}", "--ca", str(dev_pki.ca_bundle), "--count", "1"],
        cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sub.stdout is not None
        first = sub.stdout.readline()  # printed once connected, before subscribing
        assert "X25519MLKEM768" in first and "ML-DSA-65" in first, sub.stderr.read()
        assert stack.broker.wait_log(lambda line: line.endswith(f" {TOPIC}"), timeout=30)
        assert stack.backend.upload("7.0.0", b"seven")[0] == 201
        out, err = sub.communicate(timeout=40)
    finally:
        sub.kill()
        sub.wait(10)
    assert sub.returncode == 0, err
    topic, _, body = out.strip().partition(" ")
    assert topic == TOPIC and json.loads(body)["version"] == "7.0.0"


def test_device_certificates_on_the_mqtt_door(ota_stack, dev_pki, subscribers):
    """The listener's own certificates with verify_client: a device without a certificate is
    refused before a byte reaches the broker; one with the development client certificate is
    admitted over X25519MLKEM768, and the session line names it."""
    stack = ota_stack(mqtt_certificates={
        "keypairs": [{"cert": str(dev_pki.mldsa_cert), "key": str(dev_pki.mldsa_key)},
                     {"cert": str(dev_pki.ecdsa_cert), "key": str(dev_pki.ecdsa_key)}],
        "ca_bundle": str(dev_pki.ca_bundle), "verify_client": True})
    anonymous = QTLSMqttClient(device_context(str(dev_pki.ca_bundle)),
                               server_hostname="localhost", client_id="no-cert")
    with pytest.raises(TimeoutError):
        Subscriber(anonymous, "127.0.0.1", stack.mqtt_port, timeout=5)
    refused = stack.server.wait_log(lambda e: e.get("event") == "handshake failed")
    assert refused is not None and "certificate" in refused["reason"], refused
    assert stack.broker.wait_log(lambda line: "no-cert" in line, timeout=1) is None

    ctx = device_context(str(dev_pki.ca_bundle))
    # The development client key is ECDSA P-256: the device signs with it, and still accepts
    # only an ML-DSA-65 server (the server's certificate is chosen by what it can verify).
    ctx.set_signature_algorithms(["ML-DSA-65", "ecdsa-p256"])
    ctx.use_certificate_file(str(dev_pki.client_cert))
    ctx.use_private_key_file(str(dev_pki.client_key))
    client = QTLSMqttClient(ctx, server_hostname="localhost", client_id="with-cert")
    subscribers.append(Subscriber(client, "127.0.0.1", stack.mqtt_port))
    assert client.tls_socket.negotiated_group == "X25519MLKEM768"
    assert stack.backend.upload("8.0.0", b"for certified devices")[0] == 201
    assert subscribers[0].message_for("8.0.0")["qos"] == 1
    subscribers[0].close()
    subscribers.clear()
    session = stack.server.wait_log(lambda e: e.get("event") == "session"
                                    and e.get("listener") == "mqtt"
                                    and e.get("ssl_client_subject"))
    assert session is not None and "qproxy dev client" in session["ssl_client_subject"]
