"""The `ota/update/available` message (examples/ota_backend/notify.py), parsed strictly: it
comes over the network, so anything unexpected refuses the update rather than guessing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

TOPIC = "ota/update/available"
MAX_MESSAGE = 4096
_VERSION = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9}){0,3}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BadAnnouncement(ValueError):
    """The message is not a usable announcement; the text says what is wrong."""


@dataclass(frozen=True)
class Announcement:
    version: str
    size: int
    sha256: str
    url: str

    @classmethod
    def parse(cls, payload: bytes) -> Announcement:
        if len(payload) > MAX_MESSAGE:
            raise BadAnnouncement(f"the message is {len(payload)} bytes, more than {MAX_MESSAGE}")
        try:
            data = json.loads(payload)
        except ValueError:
            raise BadAnnouncement("the message is not JSON") from None
        if not isinstance(data, dict):
            raise BadAnnouncement("the message is not a JSON object")
        version, size, sha256, url = (data.get(key) for key in ("version", "size", "sha256",
                                                                  "url"))
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise BadAnnouncement(f"version {version!r} is not like 1.2.3")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise BadAnnouncement(f"size {size!r} is not a positive integer")
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise BadAnnouncement(f"sha256 {sha256!r} is not 64 lower-case hex digits")
        if not isinstance(url, str):
            raise BadAnnouncement(f"url {url!r} is not a string")
        return cls(version, size, sha256, url)

    def download_path(self, host: str, port: int) -> str:
        """The URL's path, if it is an https URL on `host:port` (the server the device trusts
        and checks); a message cannot send the device anywhere else."""
        parts = urlsplit(self.url)
        try:
            url_port = parts.port or 443
        except ValueError:
            raise BadAnnouncement(f"url {self.url!r} has a bad port") from None
        if (parts.scheme != "https" or (parts.hostname or "").lower() != host.lower().strip("[]")
                or url_port != port):
            raise BadAnnouncement(f"url {self.url!r} is not on the update server "
                                  f"https://{host}:{port}")
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        # It goes into a request line: no spaces, controls or bytes past ASCII.
        if not path.startswith("/") or any(not "!" <= char <= "~" for char in path):
            raise BadAnnouncement(f"url {self.url!r} has no usable path")
        return path
