"""The device's parsing of `ota/update/available` (examples/ota_device/announcement.py): the
message comes off the network, so anything unexpected is refused with the reason (in-process)."""

from __future__ import annotations

import json

import pytest

from examples.ota_device.announcement import Announcement, BadAnnouncement

GOOD = {"version": "1.4.0", "size": 10, "sha256": "ab" * 32,
        "url": "https://localhost:8443/api/firmware/1.4.0/download"}


def message(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_a_good_announcement():
    announcement = Announcement.parse(message())
    assert announcement == Announcement("1.4.0", 10, "ab" * 32, GOOD["url"])
    assert announcement.download_path("localhost", 8443) == "/api/firmware/1.4.0/download"
    assert announcement.download_path("LOCALHOST", 8443) == "/api/firmware/1.4.0/download"


@pytest.mark.parametrize("payload, reason", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"{" + b" " * 5000 + b"}", "more than 4096"),
    (message(version="1.4.0; rm -rf /"), "version"),
    (message(version="../../etc/passwd"), "version"),
    (message(version=140), "version"),
    (message(size=-1), "size"),
    (message(size=True), "size"),
    (message(size="10"), "size"),
    (message(sha256="AB" * 32), "sha256"),
    (message(sha256="ab" * 31), "sha256"),
    (message(url=None), "url"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "sha256"}).encode(), "sha256"),
])
def test_a_bad_message_is_refused_with_the_reason(payload, reason):
    with pytest.raises(BadAnnouncement, match=reason):
        Announcement.parse(payload)


@pytest.mark.parametrize("url", [
    "http://localhost:8443/api/firmware/1.4.0/download",          # not TLS
    "https://evil.example:8443/api/firmware/1.4.0/download",       # another host
    "https://localhost:9443/api/firmware/1.4.0/download",          # another port
    "https://localhost/api/firmware/1.4.0/download",               # 443, not the server's
    "https://localhost@evil.example:8443/x",                       # user info trick
    "https://localhost:8443/x\r\nHost: evil",                      # header injection
    "https://localhost:8443/x y",                                  # space in the request line
    "https://localhost:8443",                                      # no path
    "https://localhost:99999/x",                                   # bad port
])
def test_an_url_off_the_trusted_server_is_refused(url):
    announcement = Announcement.parse(message(url=url))
    with pytest.raises(BadAnnouncement, match="url"):
        announcement.download_path("localhost", 8443)
