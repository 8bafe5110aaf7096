"""paho-mqtt over qproxy.qtls (examples/ota_device/mqtt_tls.py) against a real Mosquitto's own
TLS listener. Mosquitto links the system OpenSSL 3.0, so this is classical TLS (X25519, the
ECDSA P-384 certificate): it checks the transport — handshake, verification, non-blocking
reads and writes under paho's loop, reconnect — apart from qtls-server. The post-quantum path
through qtls-server's MQTT door is in test_mqtt_e2e.py."""

from __future__ import annotations

import os
import threading

import pytest

from examples.ota_device.mqtt_tls import MqttTlsError, QTLSMqttClient
from qproxy import pki
from qproxy.qtls import (
    QTLS_CLIENT_MODE, QTLS_OP_CLASSICAL_ONLY, QTLS_VERIFY_FAIL_IF_NO_PEER_CERT, QTLS_VERIFY_PEER, QTLSContext,
    QTLSVerificationError,
)
from tests.support.harness import free_port
from tests.support.mosquitto import Subscriber, plain_client, start_broker  # noqa: F401

TOPIC = "ota/update/available"


def classical_context(ca_file) -> QTLSContext:
    ctx = QTLSContext(mode=QTLS_CLIENT_MODE)
    ctx.load_verify_locations(str(ca_file))
    ctx.set_options(QTLS_OP_CLASSICAL_ONLY)  # what Mosquitto's OpenSSL 3.0 can do
    ctx.set_kem_algorithms(["x25519"])
    ctx.set_verify_mode(QTLS_VERIFY_PEER | QTLS_VERIFY_FAIL_IF_NO_PEER_CERT)
    return ctx


@pytest.fixture
def tls_broker(start_broker, dev_pki):
    return start_broker(tls=(dev_pki.ecdsa_cert, dev_pki.ecdsa_key))


@pytest.fixture
def clients():
    made: list = []
    yield made
    for item in made:
        item.close()


def publisher(broker, clients):
    client = plain_client()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    clients.append(_Looping(client))
    return client


class _Looping:
    """A client whose network loop runs in paho's thread until close()."""

    def __init__(self, client) -> None:
        self.client = client

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_messages_arrive_over_qtls(tls_broker, dev_pki, clients):
    client = QTLSMqttClient(classical_context(dev_pki.ca_bundle), server_hostname="localhost")
    subscriber = Subscriber(client, "127.0.0.1", tls_broker.tls_port)
    clients.append(subscriber)
    assert client.tls_socket.negotiated_group == "X25519"
    assert client.tls_socket.peer_certificate_keys[0] == "ECDSA P-384"
    pub = publisher(tls_broker, clients)
    # Small and large (several TLS records) messages, in one burst: every one arrives, in order.
    payloads = [os.urandom(size) for size in (1, 100, 70_000, 5, 300_000, 2)]
    for payload in payloads:
        pub.publish(TOPIC, payload, qos=1)
    received = [subscriber.next_message().payload for _ in payloads]
    assert received == payloads


def test_publishing_over_qtls(tls_broker, dev_pki, clients):
    subscriber = Subscriber(plain_client(), "127.0.0.1", tls_broker.port)
    clients.append(subscriber)
    client = QTLSMqttClient(classical_context(dev_pki.ca_bundle), server_hostname="localhost")
    client.connect("127.0.0.1", tls_broker.tls_port)
    client.loop_start()
    clients.append(_Looping(client))
    info = client.publish(TOPIC, b"x" * 200_000, qos=1)
    info.wait_for_publish(15)
    assert info.is_published()
    assert subscriber.next_message().payload == b"x" * 200_000


def test_an_untrusted_server_is_refused_with_the_reason(tls_broker, tmp_path):
    other_ca = pki.init(tmp_path / "other-pki").ca_bundle
    client = QTLSMqttClient(classical_context(other_ca), server_hostname="localhost")
    with pytest.raises(MqttTlsError) as caught:
        client.connect("127.0.0.1", tls_broker.tls_port)
    assert isinstance(caught.value, ConnectionError)  # what paho's reconnect loop retries
    assert isinstance(caught.value.tls_error, QTLSVerificationError)
    assert "did not verify" in str(caught.value)


def test_a_wrong_host_name_is_refused(tls_broker, dev_pki):
    client = QTLSMqttClient(classical_context(dev_pki.ca_bundle),
                            server_hostname="not-this-host.example")
    with pytest.raises(MqttTlsError, match="did not verify"):
        client.connect("127.0.0.1", tls_broker.tls_port)


def test_nothing_listening_is_a_connection_error(dev_pki):
    client = QTLSMqttClient(classical_context(dev_pki.ca_bundle), server_hostname="localhost")
    client.connect_timeout = 5
    with pytest.raises(MqttTlsError, match="cannot connect to 127.0.0.1"):
        client.connect("127.0.0.1", free_port())


def test_paho_reconnects_over_qtls_after_the_broker_restarts(start_broker, dev_pki, clients):
    keys = (dev_pki.ecdsa_cert, dev_pki.ecdsa_key)
    first = start_broker(tls=keys)
    tls_port = first.tls_port
    client = QTLSMqttClient(classical_context(dev_pki.ca_bundle), server_hostname="localhost")
    client.reconnect_delay_set(min_delay=1, max_delay=2)
    connects = threading.Semaphore(0)
    client.on_connect = lambda c, *_: (c.subscribe(TOPIC, qos=1), connects.release())
    received: list[bytes] = []
    got = threading.Event()
    client.on_message = lambda _c, _u, message: (received.append(message.payload), got.set())
    client.connect("127.0.0.1", tls_port)
    client.loop_start()
    clients.append(_Looping(client))
    assert connects.acquire(timeout=15)
    first.stop()
    second = start_broker(tls=keys, tls_port=tls_port)
    assert connects.acquire(timeout=30), "paho did not reconnect over qtls"
    sockets_seen = client.tls_socket
    assert sockets_seen is not None and sockets_seen.negotiated_group == "X25519"
    pub = publisher(second, clients)
    # The SUBACK of the new session may trail the CONNACK: publish until one arrives.
    for _ in range(30):
        pub.publish(TOPIC, b"after restart", qos=1).wait_for_publish(5)
        if got.wait(0.5):
            break
    assert b"after restart" in received
