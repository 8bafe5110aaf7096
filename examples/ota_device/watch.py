"""Wait for `ota/update/available` over post-quantum TLS (qtls-server's MQTT door) and install
each announced firmware with the `Agent` (HTTPS download, SHA-256, ML-DSA signature).

The MQTT connection uses the agent's own context: X25519MLKEM768 only, an ML-DSA-65 chain that
verifies against the CA, the host name checked. paho's network thread only queues messages;
installing runs on the caller's thread, so a slow download never stalls MQTT keep-alives.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from paho.mqtt import client as paho

from .agent import EXPECTED_GROUP, EXPECTED_KEY, Agent, Report, UpdateRefused
from .announcement import TOPIC, Announcement, BadAnnouncement
from .mqtt_tls import MqttTlsError, QTLSMqttClient

SUBSCRIBE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Outcome:
    """What became of one message: a report, or the reason it was refused."""

    report: Report | None = None
    refused: str | None = None


class UpdateWatcher:
    def __init__(self, agent: Agent, mqtt_host: str, mqtt_port: int,
                 client_id: str = "") -> None:
        self.agent = agent
        self.mqtt_host = mqtt_host
        self.mqtt_port = mqtt_port
        self.client = QTLSMqttClient(agent.context, server_hostname=agent.server_name,
                                     client_id=client_id)
        self._messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self._subscribed = threading.Event()
        self._refused_connect: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = lambda _client, _userdata, message: self._messages.put(message)

    def connect(self) -> None:
        """Connect, check the TLS the door negotiated, subscribe; raises UpdateRefused."""
        try:
            self.client.connect(self.mqtt_host, self.mqtt_port, keepalive=60)
        except MqttTlsError as exc:
            raise UpdateRefused(f"MQTT over TLS to {self.mqtt_host}:{self.mqtt_port}: {exc}"
                                ) from None
        tls = self.client.tls_socket
        assert tls is not None
        if tls.negotiated_group != EXPECTED_GROUP:
            self.close()
            raise UpdateRefused(f"the MQTT door's key exchange was {tls.negotiated_group}, not "
                                f"{EXPECTED_GROUP}")
        chain = tls.peer_certificate_keys
        if not chain or any(kind != EXPECTED_KEY for kind in chain):
            self.close()
            raise UpdateRefused(f"the MQTT door's chain is {chain}, not all {EXPECTED_KEY}")
        self.client.loop_start()
        if not self._subscribed.wait(SUBSCRIBE_TIMEOUT):
            self.close()
            raise UpdateRefused(self._refused_connect or f"no subscription to {TOPIC} within "
                                f"{SUBSCRIBE_TIMEOUT:.0f}s")

    def _on_connect(self, client: paho.Client, userdata: object, flags: object,
                    reason: paho.ReasonCode, properties: object) -> None:
        if reason.is_failure:
            self._refused_connect = f"the MQTT broker refused the connection: {reason}"
            return
        # On every (re)connect: the broker forgot a clean session's subscription.
        client.subscribe(TOPIC, qos=1)

    def handle(self, message: paho.MQTTMessage) -> Outcome:
        try:
            announcement = Announcement.parse(message.payload)
            return Outcome(report=self.agent.install_announced(announcement))
        except BadAnnouncement as exc:
            return Outcome(refused=f"bad announcement on {message.topic}: {exc}")
        except UpdateRefused as exc:
            return Outcome(refused=str(exc))

    def run(self, on_outcome: Callable[[Outcome], None], *, once: bool = False,
            timeout: float | None = None) -> list[Outcome]:
        """Handle messages until `timeout` seconds pass (None: forever); with `once`, return
        after the first install. A refusal does not stop the watch: the next announcement
        (e.g. the same version once its signature is uploaded) may be installable. Returns
        every outcome."""
        deadline = None if timeout is None else time.monotonic() + timeout
        outcomes: list[Outcome] = []
        while deadline is None or time.monotonic() < deadline:
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            try:
                message = self._messages.get(timeout=wait)
            except queue.Empty:
                continue
            outcome = self.handle(message)
            outcomes.append(outcome)
            on_outcome(outcome)
            if once and outcome.report is not None and outcome.report.status == "installed":
                break
        return outcomes

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
