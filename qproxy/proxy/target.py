"""The request target and the request's framing, checked before anything is routed or forwarded.

Pure functions, no I/O. `normalise_target` gives two views of one target that cannot disagree:
`Target.path` is what routes match (percent-decoded, dot-segments resolved, slashes merged, as
nginx's `$uri`), and `Target.forward` is what the backend is sent: the same path, re-encoded so
that a backend which decodes it and resolves dot-segments itself lands on `Target.path` and
nowhere else, and no reading of it holds a dot-segment left to resolve. A route can therefore
never be escaped by a path the backend reads differently.

Choices where the RFCs leave room; "nginx" means nginx 1.22's `$uri`, checked on this project:
- An encoded slash (`%2F`) separates segments for dot-segment removal and routing, as it does in
  nginx (`/a%2Fb` is `$uri` `/a/b`; `/public/..%2Finternal` is `/internal`): were it data,
  `/public/..%2Finternal` would route under `/public/` and reach `/internal` at any backend
  that decodes `%2F` (most do). Unlike nginx's `proxy_pass` with a URI part, the forwarded
  target keeps the `%2F` that survive, so a backend that reads `%2F` as data (a name holding
  a slash) still gets it.
- Reserved characters (`!$&'()*+,;=:@`) keep the form they were sent in; unreserved ones go out
  plain (`%41` -> `A`); everything else outside RFC 3986's `pchar` (space, `"`, `<`, `\\`,
  non-ASCII bytes, a decoded `%`) goes out percent-encoded, hex in upper case.
- Empty segments are merged (`//a` -> `/a`), as nginx's `merge_slashes on` does: a backend that
  merges them would otherwise see a route the prefix match did not.
- Climbing above the root (`/../x`, `/%2e%2e`) is refused (400), as nginx does, where RFC 3986
  5.2.4 would silently stop at the root.
- A fragment (`#...`) is dropped, as nginx does; a client should never send one.
- Stricter than nginx: a NUL or control character, sent plain or encoded (nginx refuses only
  `%00`); a backslash is an ordinary character, as nginx treats it on Linux, but a segment that
  a Windows backend (backslash as separator) or a servlet container (`;` parameters cut off,
  `..;`) would read as `..` is refused, since there `/public/..\\internal` escapes the route;
  absolute-form only with the `http` and `https` schemes (nginx takes any) and no userinfo.
- Absolute-form (`http://host/p?q`) becomes origin-form (`/p?q`); `Target.authority` keeps the
  host for the caller's check against Host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, NamedTuple

__all__ = ["Target", "TargetError", "normalise_target", "check_request_framing"]


class TargetError(Exception):
    """A request refused before routing. `status` is what the client gets (400 or 501), the
    message says why, in words fit for the error log and the response body."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        super().__init__(reason)


class Target(NamedTuple):
    """A request target, normalised.

    path: for routing: percent-decoded (UTF-8, undecodable bytes as surrogate escapes), no
        query, no `.`/`..`/empty segments; `*` for the asterisk form.
    forward: for the backend's request line: origin-form path with the query as sent.
    authority: the `host[:port]` of an absolute-form target, else None.

    A NamedTuple (immutable, compared and hashed by value) rather than a frozen dataclass,
    whose __init__ costs ~2.5 us: this is made for every request.
    """

    path: str
    forward: str
    authority: str | None = None

    @property
    def is_asterisk(self) -> bool:
        return self.path == "*"


def _bytes(*groups: str) -> frozenset[int]:
    return frozenset(b"".join(g.encode("ascii") for g in groups))


_DIGITS = "0123456789"
_ALPHA = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_UNRESERVED = _bytes(_ALPHA, _DIGITS, "-._~")
# sub-delims and the two gen-delims a path segment may hold: meaningful to some backends
# (`;` parameters, `=`), so encoded or plain stays as the client chose.
_AS_SENT = _bytes("!$&'()*+,;=:@")
_HEX = _bytes(_DIGITS, "abcdefABCDEF")
_AUTHORITY = _UNRESERVED | _AS_SENT - {ord("@")} | _bytes("[]%")
_SCHEMES = ("http://", "https://")
_SLASH = 0x2F
_PORT = re.compile(rb"(?::[0-9]*)?")
# Most targets are already in normal form: segments of plain characters, none empty or
# starting with a dot, a printable ASCII query. Those skip the byte-by-byte walk below (a
# regular expression costs ~1 us where the walk costs ~20-40 us); tests check that both paths
# give the same answer.
_NORMAL_PATH = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*)*/?")
_PLAIN_QUERY = re.compile(r"[!-~]*")


def _control(byte: int) -> bool:
    return byte < 0x20 or byte == 0x7F


@dataclass(slots=True)
class _Segment:
    """One path segment: how it is sent (`encoded`), what it means (`decoded`), and whether
    the slash before it was sent as `%2F`."""

    encoded_slash: bool
    encoded: bytearray
    decoded: bytearray

    def separator(self) -> bytes:
        return b"%2F" if self.encoded_slash else b"/"


def _segments(path: bytes) -> list[_Segment]:
    """Split at `/` and `%2F`, decoding each segment; refuses malformed escapes and control
    bytes (sent plain or encoded)."""
    segments = [_Segment(False, bytearray(), bytearray())]  # path[0] is the leading "/"
    i, end = 1, len(path)
    while i < end:
        byte = path[i]
        current = segments[-1]
        if byte == _SLASH:
            segments.append(_Segment(False, bytearray(), bytearray()))
            i += 1
            continue
        if byte == 0x25:  # "%"
            hexa = path[i + 1:i + 3]
            if len(hexa) != 2 or not all(h in _HEX for h in hexa):
                raise TargetError(400, "malformed percent-encoding in the request path")
            value = int(hexa, 16)
            i += 3
            if value == _SLASH:
                segments.append(_Segment(True, bytearray(), bytearray()))
                continue
            if _control(value):
                raise TargetError(400, "a NUL or control character in the request path")
            current.decoded.append(value)
            if value in _UNRESERVED:
                current.encoded.append(value)
            else:
                current.encoded += b"%%%02X" % value
            continue
        if _control(byte) or byte == 0x20:
            raise TargetError(400, "a space or control character in the request target")
        current.decoded.append(byte)
        if byte in _UNRESERVED or byte in _AS_SENT:
            current.encoded.append(byte)
        else:
            current.encoded += b"%%%02X" % byte
        i += 1
    return segments


def _climbs_elsewhere(decoded: bytes) -> bool:
    """Whether a segment other than `..` itself is `..` to a backend reading `\\` as a
    separator (Windows) or cutting `;` parameters off (Java servlet containers)."""
    return decoded != b".." and b".." in decoded.split(b";", 1)[0].split(b"\\")


def _resolve(segments: list[_Segment]) -> list[_Segment]:
    """RFC 3986 5.2.4 on whole segments, plus merging of empty ones; refuses climbing above
    the root. A trailing `.`, `..` or empty segment leaves the path ending in a slash."""
    kept: list[_Segment] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        word = bytes(segment.decoded)
        if _climbs_elsewhere(word):
            raise TargetError(400, "a path segment that some backends read as '..'")
        if word == b"..":
            if not kept:
                raise TargetError(400, "the request path climbs above the root")
            kept.pop()
        elif word and word != b".":
            kept.append(segment)
            continue
        if index == last:  # end on a directory: keep its trailing slash, plain unless the
            # client sent it as the final "%2F" itself
            kept.append(_Segment(segment.encoded_slash and not word, bytearray(), bytearray()))
    return kept


def _split_absolute(target: bytes) -> tuple[bytes, str]:
    """`http://authority/rest` -> (b"/rest", "authority"), refusing what is not a plain
    http(s) URI naming a host."""
    lowered = target[:8].lower()
    scheme = next((s for s in _SCHEMES if lowered.startswith(s.encode())), None)
    if scheme is None:
        raise TargetError(400, "the request target is not origin-form, absolute-form or '*'")
    rest = target[len(scheme):]
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?"), rest.find(b"#")) if i >= 0),
              default=len(rest))
    authority, rest = rest[:cut], rest[cut:]
    if b"@" in authority:
        raise TargetError(400, "the absolute request target holds user information")
    if not all(b in _AUTHORITY for b in authority):
        raise TargetError(400, "an invalid character in the request target's host")
    if authority.startswith(b"["):
        host, bracket, port = authority[1:].partition(b"]")
        host = host if bracket else b""
    else:
        host, _, port = authority.partition(b":")
        port = b":" + port if _ else b""
    if not host or b"[" in host or b"]" in host or not _PORT.fullmatch(port):
        raise TargetError(400, "the absolute request target names no valid host")
    return (rest if rest.startswith(b"/") else b"/" + rest), authority.decode("ascii")


def normalise_target(raw: str, *, method: str | None = None) -> Target:
    """The request target `raw` (as the parser decoded it: UTF-8 with surrogateescape),
    normalised for routing and forwarding; TargetError(400) if it cannot be served safely.
    Given the request's `method`, the asterisk form is refused for any but OPTIONS."""
    if raw == "*" and method not in (None, "OPTIONS"):
        raise TargetError(400, f"the asterisk request target with {method} (only OPTIONS)")
    if raw.startswith("/"):
        sent = raw.partition("#")[0]
        path, _, query = sent.partition("?")
        if _NORMAL_PATH.fullmatch(path) and _PLAIN_QUERY.fullmatch(query):
            return Target(path, sent)
    return _normalise(raw)


def _normalise(raw: str) -> Target:
    """normalise_target the long way, byte by byte."""
    try:
        target = raw.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise TargetError(400, "the request target is not valid text") from None
    if target == b"*":
        return Target("*", "*")
    authority = None
    if not target.startswith(b"/"):
        target, authority = _split_absolute(target)
    target = target.partition(b"#")[0]
    path, question, query = target.partition(b"?")
    if any(_control(b) or b == 0x20 for b in query):
        raise TargetError(400, "a space or control character in the request target")
    kept = _resolve(_segments(path))
    if not kept:
        kept = [_Segment(False, bytearray(), bytearray())]
    routed = b"/".join(bytes(s.decoded) for s in kept)
    # The first separator is the root's slash, whatever the segment now first followed.
    sent = b"/" + b"".join(s.separator() + s.encoded for s in kept)[len(kept[0].separator()):]
    return Target(
        path="/" + routed.decode("utf-8", "surrogateescape"),
        forward=(sent + question + query).decode("utf-8", "surrogateescape"),
        authority=authority)


def check_request_framing(fields: Iterable[tuple[bytes, bytes]], *,
                          http_version: str = "1.1") -> None:
    """Refuse a request body whose length the backend could read differently than we do
    (request smuggling), as nginx does: a Transfer-Encoding other than one plain `chunked`
    is 501, Transfer-Encoding with Content-Length, Transfer-Encoding in HTTP/1.0, or several
    or malformed Content-Length fields are 400. `fields` are the raw header fields.

    Several Transfer-Encoding fields are 501 as h11 answers (nginx says 400, "duplicate header
    line"). llhttp refuses some of these itself (`chunked, chunked`, TE with Content-Length,
    any repeated Content-Length) but lets `gzip, chunked`, `identity, chunked`, `, chunked`,
    split fields and HTTP/1.0 with TE through: these checks are what stops those."""
    codings: list[bytes] = []
    lengths: list[bytes] = []
    for name, value in fields:
        lower = name.lower()
        if lower == b"transfer-encoding":
            codings.append(value.strip(b" \t"))
        elif lower == b"content-length":
            lengths.append(value.strip(b" \t"))
    if codings:
        if len(codings) > 1 or codings[0].lower() != b"chunked":
            shown = b", ".join(codings).decode("latin-1")
            raise TargetError(501, f"Transfer-Encoding {shown!r} is not supported "
                                   "(only a single 'chunked')")
        if lengths:
            raise TargetError(400, "both Transfer-Encoding and Content-Length")
        if http_version == "1.0":
            raise TargetError(400, "Transfer-Encoding in an HTTP/1.0 request")
    if len(set(lengths)) > 1:
        raise TargetError(400, "several differing Content-Length values")
    if len(lengths) > 1:
        raise TargetError(400, "more than one Content-Length field")
    if lengths and not (lengths[0].isdigit() and lengths[0].isascii()):
        raise TargetError(400, "a malformed Content-Length")
