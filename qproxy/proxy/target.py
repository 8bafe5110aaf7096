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
  `..;`) would read as `.` or `..` is refused, since there `/public/..\\internal` escapes the
  route; absolute-form only with the `http` and `https` schemes (nginx takes any), no userinfo.
- Not covered: a servlet container reads `/internal;x/secret` as `/internal/secret`, which the
  prefix `/internal/` does not match (nginx has the same gap); route such backends whole.
- Absolute-form (`http://host/p?q`) becomes origin-form (`/p?q`); `Target.authority` keeps the
  host for the caller's check against Host.
"""

from __future__ import annotations

import re
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
# RFC 3986's authority without user information, as a Host field value must be (RFC 9112 3.2):
# a reg-name or a bracketed IP literal, then an optional port.
_HOST_FIELD = re.compile(
    rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]+|\[[A-Za-z0-9\-._~!$&'()*+,;=%:]+\])(?::[0-9]*)?")
_PORT = re.compile(rb"(?::[0-9]*)?")
# Most targets are already in normal form: segments of plain characters, none empty or
# starting with a dot, a printable ASCII query. Those skip the segment walk below (one regular
# expression, ~1 us in all); tests check that both ways give the same answer.
_NORMAL_PATH = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*)*/?")
_PLAIN_QUERY = re.compile(r"[!-~]*")


# Byte tables for the long way; every step below is a C-level split, join, map or regular
# expression, or a Python step per escape or per segment, never per byte.
_RAW = [bytes([b]) if b in _UNRESERVED or b in _AS_SENT or b == 0x2F else b"%%%02X" % b
        for b in range(256)]
_HEXPAIRS = [bytes([a, b]) for a in _HEX for b in _HEX]
_DECODED = {pair: bytes([int(pair, 16)]) for pair in _HEXPAIRS}
_REENCODED = {pair: (value if value[0] in _UNRESERVED else b"%%%02X" % value[0])
              for pair, value in _DECODED.items()}
_PLAIN = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_SPACE_OR_CONTROL = re.compile(rb"[\x00-\x20\x7f]")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_SEPARATOR = re.compile(rb"(/|%2F)")


def _encode(plain: bytes) -> bytes:
    """Bytes sent plain (no escapes among them), as they go on."""
    return plain if _PLAIN.fullmatch(plain) else b"".join(map(_RAW.__getitem__, plain))


_BACKSLASH_OR_SEMICOLON = re.compile(rb"[\\;]")
_DOT_WORDS = frozenset((b".", b".."))


def _dots_elsewhere(decoded: bytes) -> bool:
    """Whether a segment that is not a dot-segment holds one to a backend reading `\\` as a
    separator (Windows), cutting `;` parameters off (Java servlet containers), or both: any
    `.` or `..` between those characters counts, so no combination of readings resolves a
    dot-segment we did not."""
    return not _DOT_WORDS.isdisjoint(_BACKSLASH_OR_SEMICOLON.split(decoded))


def _canonical(path: bytes) -> tuple[bytes, bytes]:
    """The path decoded (`%2F` too), and re-encoded: escapes of unreserved characters decoded,
    other escapes upper-cased, plain bytes outside RFC 3986's pchar encoded, `%2F` kept.
    Refuses malformed escapes and control bytes, plain or encoded."""
    if _SPACE_OR_CONTROL.search(path):
        raise TargetError(400, "a space or control character in the request target")
    plain = _PLAIN.fullmatch(path) is not None
    if b"%" not in path:
        return path, (path if plain else _encode(path))
    first, *escaped = path.split(b"%")
    try:
        decoded = first + b"".join([_DECODED[e[:2]] + e[2:] for e in escaped])
        if plain:
            encoded = first + b"".join([_REENCODED[e[:2]] + e[2:] for e in escaped])
        else:
            encoded = _encode(first) + b"".join([_REENCODED[e[:2]] + _encode(e[2:])
                                                 for e in escaped])
    except KeyError:
        raise TargetError(400, "malformed percent-encoding in the request path") from None
    if _CONTROL.search(decoded):
        raise TargetError(400, "a NUL or control character in the request path")
    return decoded, encoded


def _resolve(path: bytes) -> tuple[bytes, bytes]:
    """The path (which starts with "/") decoded for routing and re-encoded for the backend,
    after RFC 3986 5.2.4 on whole segments and merging of empty ones; refuses climbing above
    the root. Segments are split at `/` and at `%2F` alike; each re-encoded segment keeps the
    separator it was sent with, except that the first follows the root's plain slash."""
    decoded, encoded = _canonical(path)
    words = decoded.split(b"/")[1:]
    kept: list[int] = []
    for index, word in enumerate(words):
        if word == b"..":
            if not kept:
                raise TargetError(400, "the request path climbs above the root")
            kept.pop()
        elif word and word != b".":
            if b"." in word and _dots_elsewhere(word):
                raise TargetError(400, "a path segment that some backends read as '.' or '..'")
            kept.append(index)
    last = words[-1]
    directory = last in (b"", b".", b"..")  # the result ends on a directory too
    routed = b"/" + b"/".join([words[i] for i in kept]) + (b"/" if directory and kept else b"")
    if encoded == decoded:  # nothing was or goes encoded: the same bytes go on
        return routed, routed
    if b"%2F" not in encoded:
        segments = encoded.split(b"/")[1:]
        return routed, (b"/" + b"/".join([segments[i] for i in kept])
                        + (b"/" if directory and kept else b""))
    pieces = _SEPARATOR.split(encoded)  # "", separator, segment, separator, segment...
    separators, segments = pieces[1::2], pieces[2::2]
    sent = b"".join([separators[i] + segments[i] for i in kept])
    if directory:  # the trailing slash stays "%2F" only if the client sent it last
        sent += separators[-1] if not last else b"/"
    # the first segment follows the root's plain slash, whatever it followed before
    return routed, b"/" + sent[1 if sent.startswith(b"/") else 3:]


def valid_host_field(value: bytes) -> bool:
    """Whether a non-empty Host value is `host[:port]`. Anything else (a space, a slash, a
    stray bracket, bytes past ASCII) would be routed on and handed to the backend as
    X-Forwarded-Host, where one that builds links from it gets a path or a second host."""
    return _HOST_FIELD.fullmatch(value) is not None


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
        host, colon, port = authority.partition(b":")
        port = colon + port
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
        # (";." and ".;" may make a dot-segment for a servlet container: the long way decides)
        if (_NORMAL_PATH.fullmatch(path) and _PLAIN_QUERY.fullmatch(query)
                and ";." not in path and ".;" not in path):
            return Target(path, sent)
    return _normalise(raw)


def _normalise(raw: str) -> Target:
    """normalise_target the long way, segment by segment."""
    try:  # a fragment is dropped unread, whatever it holds, as in the shortcut
        target = raw.partition("#")[0].encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise TargetError(400, "the request target is not valid text") from None
    if target == b"*":
        return Target("*", "*")
    authority = None
    if not target.startswith(b"/"):
        target, authority = _split_absolute(target)
    path, question, query = target.partition(b"?")
    if _SPACE_OR_CONTROL.search(query):
        raise TargetError(400, "a space or control character in the request target")
    routed, forward = _resolve(path)
    return Target(
        path=routed.decode("utf-8", "surrogateescape"),
        forward=(forward + question + query).decode("utf-8", "surrogateescape"),
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
