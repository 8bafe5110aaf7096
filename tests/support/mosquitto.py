"""A real Mosquitto broker for a test: its own config file, 127.0.0.1 on a free port, no
persistence, stopped (and reaped) by the fixture that started it."""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from paho.mqtt import client as paho

from tests.support.harness import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"  # Debian puts it in sbin
MOSQUITTO_SUB = shutil.which("mosquitto_sub")


def require_mosquitto() -> None:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (Debian package mosquitto; make system-deps-test)")


class Broker:
    def __init__(self, workdir: Path, port: int | None = None,
                 tls: tuple[Path, Path] | None = None, tls_port: int | None = None) -> None:
        """`tls`: (certificate, key) for a second listener of Mosquitto's own TLS (OpenSSL
        3.0, classical only) on `tls_port`."""
        require_mosquitto()
        self.port = port or free_port()
        self.tls_port = (tls_port or free_port()) if tls else None
        tls_listener = (f"listener {self.tls_port} 127.0.0.1\ncertfile {tls[0]}\n"
                        f"keyfile {tls[1]}\n") if tls else ""
        self.config_path = workdir / f"mosquitto-{self.port}.conf"
        self.config_path.write_text(
            f"listener {self.port} 127.0.0.1\n{tls_listener}"
            "allow_anonymous true\n"
            # As root Mosquitto would switch to the 'mosquitto' user, who cannot read the
            # test's keys in its private temporary directory.
            f"{'user root' + chr(10) if os.geteuid() == 0 else ''}"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "log_type subscribe\n"
            "connection_messages true\n")
        self.log: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config_path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._wait_listening(timeout=15):
            self.stop()
            raise RuntimeError("mosquitto did not start:\n" + "\n".join(self.log[-20:]))

    def _wait_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for port in (self.port, self.tls_port):
            while port is not None:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    return False
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
        return True

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.log.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_log(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.log:
                    if predicate(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    return None
                self._cond.wait(min(remaining, 0.2))

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
def start_broker(tmp_path: Path):
    """Starts Mosquitto brokers for the test; all are stopped after it."""
    started: list[Broker] = []

    def start(port: int | None = None, tls: tuple[Path, Path] | None = None,
              tls_port: int | None = None) -> Broker:
        broker = Broker(tmp_path, port, tls, tls_port)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


class Subscriber:
    """A paho client subscribed to `topic`, its messages collected in a queue. Any paho client
    (plain, or examples.ota_device.mqtt_tls.QTLSMqttClient) connected to `host:port`."""

    def __init__(self, client: paho.Client, host: str, port: int,
                 topic: str = "ota/update/available", timeout: float = 15.0) -> None:
        self.client = client
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        subscribed = threading.Event()
        client.on_message = lambda _client, _userdata, message: self.messages.put(message)
        client.on_subscribe = lambda *_args: subscribed.set()
        client.on_connect = lambda c, _userdata, _flags, reason, _props: (
            None if reason.is_failure else c.subscribe(topic, qos=1))
        client.connect(host, port, keepalive=30)
        client.loop_start()
        if not subscribed.wait(timeout):
            self.close()
            raise TimeoutError(f"no SUBACK for {topic} from {host}:{port} within {timeout}s")

    def next_message(self, timeout: float = 15.0) -> paho.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout}s") from None

    def message_for(self, version: str, timeout: float = 15.0) -> dict:
        """The announcement of `version` (earlier, retained ones are skipped)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.next_message(remaining)
            payload = json.loads(message.payload)
            if payload.get("version") == version:
                return {"payload": payload, "qos": message.qos, "retain": message.retain,
                        "topic": message.topic}
        raise AssertionError(f"no announcement of {version} within {timeout}s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def plain_client(client_id: str = "") -> paho.Client:
    return paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
