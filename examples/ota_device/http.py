"""Just enough HTTP/1.1 for the agent: one GET per connection over a QTLSClient."""

from __future__ import annotations

from dataclasses import dataclass

from qproxy.qtls import QTLSClient

MAX_HEAD = 64 * 1024


class HttpError(Exception):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def get(client: QTLSClient, host: str, path: str, max_body: int) -> Response:
    """GET `path` on the connected client; the server closes after the response."""
    client.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: qtls-ota-device/1\r\n"
                 f"Accept: */*\r\nConnection: close\r\n\r\n".encode("ascii"))
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer:
        chunk = client.read(65536)
        if not chunk:
            raise HttpError("the server closed the connection before the response head")
        buffer += chunk
        if len(buffer) > MAX_HEAD:
            raise HttpError("response head too large")
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"not an HTTP/1.1 status line: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = bytearray(rest)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return Response(int(parts[1]), headers, _dechunk(client, body, max_body))
    length = headers.get("content-length")
    limit = int(length) if length is not None else max_body
    if limit > max_body:
        raise HttpError(f"the response body ({limit} bytes) is larger than {max_body}")
    while len(body) < limit:
        chunk = client.read(65536)
        if not chunk:
            if length is not None:
                raise HttpError(f"the body ended after {len(body)} of {limit} bytes")
            break
        body += chunk
        if len(body) > max_body:
            raise HttpError(f"the response body is larger than {max_body} bytes")
    return Response(int(parts[1]), headers, bytes(body[:limit]))


def _dechunk(client: QTLSClient, buffer: bytearray, max_body: int) -> bytes:
    body = bytearray()

    def fill(needed: int) -> None:
        while len(buffer) < needed:
            chunk = client.read(65536)
            if not chunk:
                raise HttpError("the chunked body ended early")
            buffer.extend(chunk)

    while True:
        while b"\r\n" not in buffer:
            fill(len(buffer) + 1)
        line, _, remainder = bytes(buffer).partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        buffer[:] = remainder
        if size == 0:
            return bytes(body)
        if len(body) + size > max_body:
            raise HttpError(f"the response body is larger than {max_body} bytes")
        fill(size + 2)
        body += buffer[:size]
        del buffer[: size + 2]
