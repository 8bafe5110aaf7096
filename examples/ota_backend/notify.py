"""Update announcements over MQTT: on every upload, `ota/update/available` (QoS 1) with
`{"version", "size", "sha256", "url"}`, `url` being the HTTPS download address devices use
(through qtls-server).

The broker is optional: without `--mqtt-host` / `OTA_MQTT_HOST` the backend runs without announcing. A broker
that is down never fails an upload: paho connects in the background, keeps QoS 1 messages
queued while disconnected (up to `MAX_QUEUED`) and sends them once it is back; every failure is
one log line. The backend talks plain MQTT to a broker next to it, as it talks plain HTTP to
qtls-server: devices reach the broker through qtls-server's post-quantum MQTT door (8883).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from paho.mqtt import client as paho

from .storage import FirmwareInfo

TOPIC = "ota/update/available"
ACK_TIMEOUT = 5.0
"""How long an upload waits for the broker's PUBACK before answering anyway."""
MAX_QUEUED = 100
"""Announcements kept while the broker is unreachable; past that the oldest wins, and the
retained one (the latest version) is what a device sees when it subscribes anyway."""

log = logging.getLogger("ota_backend.notify")


class NotifierConfigError(ValueError):
    """A --mqtt-* / --public-url value is unusable; the message names it."""


@dataclass(frozen=True)
class NotifierSettings:
    host: str
    port: int = 1883
    public_url: str | None = None
    """Base of the download URL devices get, e.g. https://ota.example.com:8443; without it,
    the address the upload came in on."""
    topic: str = TOPIC
    client_id: str = "ota-backend"

    def __post_init__(self) -> None:
        if not self.host:
            raise NotifierConfigError("--mqtt-host (OTA_MQTT_HOST) is empty; leave it unset to "
                                      "turn announcements off")
        if not 0 < self.port < 65536:
            raise NotifierConfigError(f"--mqtt-port: {self.port} is not a TCP port (1-65535)")
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("https", "http") or not parts.netloc or parts.path.strip("/"):
                raise NotifierConfigError(
                    f"--public-url (OTA_PUBLIC_URL): {self.public_url!r} is not a base URL such as "
                    "https://ota.example.com:8443")


def announcement(info: FirmwareInfo, url: str) -> bytes:
    """The message body devices parse."""
    return json.dumps({"version": info.version, "size": info.size, "sha256": info.sha256,
                       "url": url}, separators=(",", ":")).encode()


class UpdateNotifier:
    """One paho client, connected in the background for the backend's lifetime."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=settings.client_id)
        self.client.max_queued_messages_set(MAX_QUEUED)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self._outage_logged = False
        """Whether the current outage was logged: paho retries with backoff, one line is enough."""

    def start(self) -> None:
        """Connect in the background; returns at once, broker up or not."""
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=60)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def download_url(self, path: str, request_base: str) -> str:
        base = self.settings.public_url or request_base
        return base.rstrip("/") + path

    def announce(self, info: FirmwareInfo, url: str, *, latest: bool) -> None:
        """Publish the announcement of `info` and wait (at most ACK_TIMEOUT) for the broker's
        acknowledgement, so the log says whether it got there. Retained when it is the latest
        version, so a device that subscribes later still learns of it. Never raises."""
        try:
            message = self.client.publish(self.settings.topic, announcement(info, url), qos=1,
                                          retain=latest)
        except (ValueError, OSError) as exc:
            log.error("announcing firmware %s on %s failed: %s", info.version,
                      self.settings.topic, exc)
            return
        where = f"{self.settings.host}:{self.settings.port}"
        if message.rc == paho.MQTT_ERR_QUEUE_SIZE:
            log.error("announcing firmware %s: %d announcements already wait for the MQTT "
                      "broker at %s; this one is dropped", info.version, MAX_QUEUED, where)
            return
        if message.rc == paho.MQTT_ERR_NO_CONN:
            log.warning("firmware %s: the MQTT broker at %s is not connected; the announcement "
                        "is queued until it is", info.version, where)
            return
        try:
            message.wait_for_publish(ACK_TIMEOUT)
        except (RuntimeError, ValueError) as exc:
            log.error("announcing firmware %s to the MQTT broker at %s failed: %s",
                      info.version, where, exc)
            return
        if message.is_published():
            log.info("announced firmware %s on %s", info.version, self.settings.topic)
        else:
            log.warning("firmware %s: the MQTT broker at %s did not acknowledge the "
                        "announcement within %ss; paho keeps it and resends it", info.version,
                        where, ACK_TIMEOUT)

    # -- paho callbacks (its network thread) ----------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: object, flags: object,
                    reason: paho.ReasonCode, properties: object) -> None:
        if reason.is_failure:
            log.error("MQTT broker %s:%d refused the connection: %s", self.settings.host,
                      self.settings.port, reason)
        else:
            self._outage_logged = False
            log.info("connected to the MQTT broker at %s:%d", self.settings.host,
                     self.settings.port)

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        if not self._outage_logged:
            self._outage_logged = True
            log.warning("cannot reach the MQTT broker at %s:%d; announcements wait, retrying",
                        self.settings.host, self.settings.port)

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object,
                       reason: paho.ReasonCode, properties: object) -> None:
        if reason.is_failure:
            log.warning("lost the MQTT broker at %s:%d (%s); reconnecting", self.settings.host,
                        self.settings.port, reason)
