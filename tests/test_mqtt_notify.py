"""The OTA backend announces uploads over MQTT (issue 14): a real Mosquitto on 127.0.0.1, the
backend as its own process (`python -m examples.ota_backend --mqtt-host ...`), subscribers
connected straight to the broker (the post-quantum door in front of it: test_mqtt_e2e.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from examples.ota_backend.notify import (
    TOPIC, NotifierConfigError, NotifierSettings, announcement,
)
from examples.ota_backend.storage import FirmwareInfo
from tests.support.harness import ROOT, child_env, free_port, wait_for_port
from tests.support.mosquitto import Subscriber, plain_client, start_broker  # noqa: F401

PUBLIC_URL = "https://ota.example.test:8443"


class OtaBackend:
    """`python -m examples.ota_backend` with MQTT announcements, its stderr collected."""

    def __init__(self, storage: Path, *args: str) -> None:
        self.port = free_port()
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "examples.ota_backend", "--port", str(self.port),
             "--storage", str(storage), *args],
            cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_line(self, text: str, timeout: float = 15.0) -> str | None:
        with self._cond:
            found = self._cond.wait_for(
                lambda: any(text in line for line in self.lines) or not self._reader.is_alive(),
                timeout)
            del found
            return next((line for line in self.lines if text in line), None)

    def upload(self, version: str, image: bytes) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/firmware/{version}", data=image, method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def put_signature(self, version: str, signature: bytes, key_id: str) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/firmware/{version}/signature", data=signature,
            method="PUT", headers={"X-Signer-Key-Id": key_id})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


@pytest.fixture
def start_ota_backend(tmp_path: Path):
    started: list[OtaBackend] = []

    def start(broker_port: int | None, *extra: str) -> OtaBackend:
        args = ["--public-url", PUBLIC_URL, *extra]
        if broker_port is not None:
            args += ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker_port)]
        backend = OtaBackend(tmp_path / f"firmware-{len(started)}", *args)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


@pytest.fixture
def subscribe():
    subscribers: list[Subscriber] = []

    def make(port: int) -> Subscriber:
        subscriber = Subscriber(plain_client(), "127.0.0.1", port)
        subscribers.append(subscriber)
        return subscriber

    yield make
    for subscriber in subscribers:
        subscriber.close()


def test_an_upload_is_announced_with_qos_1(start_broker, start_ota_backend, subscribe):
    broker = start_broker()
    backend = start_ota_backend(broker.port)
    assert backend.wait_line("connected to the MQTT broker"), backend.lines
    subscriber = subscribe(broker.port)
    image = os.urandom(50_000)
    status, meta = backend.upload("1.4.0", image)
    assert status == 201, meta
    got = subscriber.message_for("1.4.0")
    assert got["topic"] == TOPIC and got["qos"] == 1
    assert got["payload"] == {
        "version": "1.4.0", "size": len(image), "sha256": hashlib.sha256(image).hexdigest(),
        "url": f"{PUBLIC_URL}/api/firmware/1.4.0/download"}
    assert backend.wait_line("announced firmware 1.4.0 on ota/update/available")


def test_a_device_that_subscribes_later_gets_the_latest_version(start_broker,
                                                                 start_ota_backend, subscribe):
    """Retained: the latest announcement waits in the broker; an older version uploaded
    after it (a back-port) is announced but does not replace it."""
    broker = start_broker()
    backend = start_ota_backend(broker.port)
    assert backend.upload("2.0.0", b"two")[0] == 201
    assert backend.upload("1.9.0", b"one-nine")[0] == 201
    assert backend.wait_line("announced firmware 1.9.0"), backend.lines
    late = subscribe(broker.port)
    first = late.next_message()
    assert first.retain and json.loads(first.payload)["version"] == "2.0.0"
    assert late.messages.empty()


def test_without_a_broker_uploads_still_succeed_and_the_announcement_waits(
        start_broker, start_ota_backend, subscribe):
    port = free_port()  # nothing listens there yet
    backend = start_ota_backend(port)
    assert backend.wait_line("cannot reach the MQTT broker"), backend.lines
    status, meta = backend.upload("3.1.0", b"firmware while the broker is down")
    assert status == 201, meta
    assert backend.wait_line("is queued until it is"), backend.lines
    broker = start_broker(port)
    assert backend.wait_line("connected to the MQTT broker", timeout=40), backend.lines
    # Queued, then sent on reconnect and retained: a subscriber arriving now still gets it.
    assert subscribe(broker.port).message_for("3.1.0")["payload"]["size"] == 33
    assert sum("cannot reach the MQTT broker" in line for line in backend.lines) == 1


def test_a_broker_that_goes_away_does_not_fail_uploads(start_broker, start_ota_backend,
                                                       subscribe):
    broker = start_broker()
    backend = start_ota_backend(broker.port)
    assert backend.wait_line("connected to the MQTT broker"), backend.lines
    broker.stop()
    assert backend.wait_line("lost the MQTT broker"), backend.lines
    status, _ = backend.upload("1.0.1", b"x" * 10)
    assert status == 201
    assert backend.upload("1.0.1", b"x" * 10)[0] == 409  # stored once, as without MQTT


def test_without_mqtt_host_the_backend_announces_nothing(start_ota_backend):
    backend = start_ota_backend(None)
    assert backend.upload("1.0.0", b"plain")[0] == 201
    assert not any("MQTT" in line or "announce" in line for line in backend.lines)


# -- in-process --------------------------------------------------------------------------------


def test_announcement_body():
    info = FirmwareInfo("1.2.3", 10, "ab" * 32, "2025-01-31T12:00:00Z")
    assert json.loads(announcement(info, "https://h:8443/x")) == {
        "version": "1.2.3", "size": 10, "sha256": "ab" * 32, "url": "https://h:8443/x"}


@pytest.mark.parametrize("kwargs, names", [
    ({"host": ""}, "--mqtt-host"),
    ({"host": "b", "port": 0}, "--mqtt-port"),
    ({"host": "b", "public_url": "ota.example.com:8443"}, "--public-url"),
    ({"host": "b", "public_url": "https://ota.example.com/api/"}, "--public-url"),
])
def test_bad_settings_name_the_option(kwargs, names):
    with pytest.raises(NotifierConfigError, match=names):
        NotifierSettings(**kwargs)


def test_a_bad_public_url_stops_the_backend_with_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "examples.ota_backend", "--storage", str(tmp_path),
         "--mqtt-host", "127.0.0.1", "--public-url", "ftp://x"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--public-url (OTA_PUBLIC_URL): 'ftp://x' is not a base URL" in out.stderr


def test_a_broker_that_never_answers_delays_an_upload_boundedly(start_ota_backend):
    """A port that accepts and then says nothing (no CONNACK, no PUBACK): the upload still
    gets its 201 once the acknowledgement wait (notify.ACK_TIMEOUT) runs out, and it is
    logged; nothing hangs."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        backend = start_ota_backend(silent.getsockname()[1])
        status, meta = backend.upload("4.0.0", b"to a silent broker")
        assert status == 201, meta
        assert backend.upload("4.0.0", b"again")[0] == 409
    line = backend.wait_line("firmware 4.0.0")
    assert line is not None and ("did not acknowledge" in line or "not connected" in line), \
        backend.lines
