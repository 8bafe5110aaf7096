"""PROXY protocol v1 and v2: a header builder and an incremental, strict parser. No I/O.

The layout follows HAProxy's doc/proxy-protocol.txt (github.com/haproxy/haproxy):
section 2.1 (v1 text line, at most 107 bytes with the CRLF), 2.2 (v2 binary header: 12-byte
signature, version/command byte, family/transport byte, big-endian length, addresses in network
order), 2.2.x (TLVs: type byte, big-endian 16-bit length, value) and 2.2.6 (PP2_TYPE_SSL:
`struct pp2_tlv_ssl { uint8_t client; uint32_t verify; struct pp2_tlv sub_tlv[0]; }`).
PP2_SUBTYPE_SSL_GROUP (0x26) and PP2_SUBTYPE_SSL_SIG_SCHEME (0x27) are HAProxy's later
registrations in the same document; PP2_TYPE_CRC32C (0x03) is CRC32c (RFC 4960 appendix B)
over the whole header with the checksum field zeroed, sent big-endian.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

import google_crc32c

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX_LINE = 107          # section 2.1: the worst case line, CRLF included
DEFAULT_MAX_V2_LENGTH = 4096  # our bound on the v2 length field; the spec allows 65535

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_SUBTYPE_SSL_GROUP = 0x26
PP2_SUBTYPE_SSL_SIG_SCHEME = 0x27

PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
_AF_INET, _AF_INET6 = 0x1, 0x2
_ADDRESS_LENGTHS = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}

Address = tuple[str, int]


class Rejection(str, enum.Enum):
    """Why a connection's PROXY header was refused: the `reason` label of
    qtls_proxy_protocol_rejected_total, so a bounded set."""

    MALFORMED = "malformed"
    TRUNCATED = "truncated"
    MISSING = "missing"
    VERSION = "version"        # a version this listener does not accept
    CHECKSUM = "checksum"
    UNTRUSTED = "untrusted"    # decided by the caller: the peer is outside `trusted`
    TIMEOUT = "timeout"        # decided by the caller


class ProxyHeaderError(Exception):
    def __init__(self, reason: Rejection, detail: str) -> None:
        super().__init__(f"PROXY header refused ({reason.value}): {detail}")
        self.reason = reason
        self.detail = detail


class Command(str, enum.Enum):
    LOCAL = "LOCAL"   # the sender's own connection (a health check): keep the socket's address
    PROXY = "PROXY"


@dataclass(frozen=True)
class SslInfo:
    """What PP2_TYPE_SSL carries. `verify` is the client certificate's X509 verify result:
    0 when the client presented a certificate that verified, non-zero otherwise (section 2.2.6;
    1 when no certificate was presented)."""

    version: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None
    group: str | None = None
    sig_scheme: str | None = None
    client_cn: str | None = None
    cert_in_connection: bool = False
    cert_in_session: bool = False
    verify: int = 1


@dataclass(frozen=True)
class NeedMore:
    """The header is not complete yet: feed more bytes."""


NEED_MORE = NeedMore()


@dataclass(frozen=True)
class Parsed:
    """A complete header. `source`/`destination` are None when the header says to keep the
    socket's own addresses (v2 LOCAL, v1 UNKNOWN, an unspecified or non-IP family)."""

    version: int
    command: Command
    source: Address | None
    destination: Address | None
    tlvs: tuple[tuple[int, bytes], ...]
    rest: bytes

    def tlv(self, kind: int) -> bytes | None:
        return next((value for t, value in self.tlvs if t == kind), None)


# ---------------------------------------------------------------- builder


def _tlv(kind: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"PROXY TLV 0x{kind:02x} longer than 65535 bytes")
    return struct.pack("!BH", kind, len(value)) + value


def _ssl_tlv(ssl: SslInfo) -> bytes:
    client = PP2_CLIENT_SSL
    if ssl.cert_in_connection:
        client |= PP2_CLIENT_CERT_CONN
    if ssl.cert_in_session or ssl.cert_in_connection:
        client |= PP2_CLIENT_CERT_SESS
    subs = [
        (PP2_SUBTYPE_SSL_VERSION, ssl.version), (PP2_SUBTYPE_SSL_CN, ssl.client_cn),
        (PP2_SUBTYPE_SSL_CIPHER, ssl.cipher), (PP2_SUBTYPE_SSL_SIG_ALG, ssl.sig_alg),
        (PP2_SUBTYPE_SSL_KEY_ALG, ssl.key_alg), (PP2_SUBTYPE_SSL_GROUP, ssl.group),
        (PP2_SUBTYPE_SSL_SIG_SCHEME, ssl.sig_scheme),
    ]
    body = struct.pack("!BI", client, ssl.verify & 0xFFFFFFFF) + b"".join(
        _tlv(kind, text.encode()) for kind, text in subs if text)
    return _tlv(PP2_TYPE_SSL, body)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped   # a dual-stack socket's view of an IPv4 peer
    return addr


def _address_block(source: Address, destination: Address) -> tuple[int, bytes]:
    src, dst = _ip(source[0]), _ip(destination[0])
    if src.version != dst.version:  # e.g. an IPv4 client on a "::" listener: say it all in v6
        src, dst = (ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a
                    for a in (src, dst))
    family = 0x11 if src.version == 4 else 0x21
    return family, src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])


def build_v2(source: Address | None, destination: Address | None, *, alpn: bytes | str | None,
             authority: str | None, ssl: SslInfo | None, crc32c: bool) -> bytes:
    """A PROXY v2 header for a TCP connection from `source` to `destination`; with either
    address unknown it is a LOCAL header (the receiver keeps the socket's addresses)."""
    if source is None or destination is None:
        ver_cmd, family, addresses = 0x20 | _CMD_LOCAL, 0x00, b""
    else:
        ver_cmd = 0x20 | _CMD_PROXY
        family, addresses = _address_block(source, destination)
    tlvs = b""
    if alpn:
        tlvs += _tlv(PP2_TYPE_ALPN, alpn.encode() if isinstance(alpn, str) else alpn)
    if authority:
        tlvs += _tlv(PP2_TYPE_AUTHORITY, authority.encode())
    if ssl is not None:
        tlvs += _ssl_tlv(ssl)
    if crc32c:
        tlvs += _tlv(PP2_TYPE_CRC32C, b"\x00\x00\x00\x00")
    length = len(addresses) + len(tlvs)
    if length > 0xFFFF:
        raise ValueError("PROXY v2 header longer than 65535 bytes")
    header = V2_SIGNATURE + struct.pack("!BBH", ver_cmd, family, length) + addresses + tlvs
    if crc32c:  # the checksum TLV is last: its value is the header's final 4 bytes
        header = header[:-4] + struct.pack("!I", google_crc32c.value(header))
    return header


def build_v1(source: Address | None, destination: Address | None) -> bytes:
    """A PROXY v1 line (for tests and senders that only speak v1); UNKNOWN without addresses."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = _ip(source[0]), _ip(destination[0])
    if src.version != dst.version:  # one family per line: say both in v6, as build_v2 does
        src, dst = (ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a
                    for a in (src, dst))
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {dst} {source[1]} {destination[1]}\r\n".encode()


# ---------------------------------------------------------------- parser


def _malformed(detail: str) -> ProxyHeaderError:
    return ProxyHeaderError(Rejection.MALFORMED, detail)


def _v1_port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise _malformed(f"v1 port {text!r} is not a decimal without leading zeros")
    port = int(text)
    if port > 65535:
        raise _malformed(f"v1 port {port} is out of range")
    return port


def _v1_address(text: str, version: int) -> str:
    try:
        addr = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise _malformed(f"v1 address {text!r} is not an IPv{version} address") from None
    if "%" in text or (version == 4 and str(addr) != text):
        raise _malformed(f"v1 address {text!r} is not canonical")
    return str(addr)


def _parse_v1_line(line: str) -> tuple[Address | None, Address | None]:
    fields = line.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return None, None    # section 2.1: anything up to the CRLF is ignored
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise _malformed(f"v1 line is not 'PROXY TCP4|TCP6 src dst sport dport': {line[:60]!r}")
    version = 4 if fields[1] == "TCP4" else 6
    source = (_v1_address(fields[2], version), _v1_port(fields[4]))
    destination = (_v1_address(fields[3], version), _v1_port(fields[5]))
    return source, destination


def split_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """TLVs laid end to end (the v2 header's tail, or PP2_TYPE_SSL's sub-TLVs); a TLV that
    runs past the end is malformed."""
    out = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise _malformed("v2 TLV area ends inside a TLV's type and length")
        kind, length = struct.unpack_from("!BH", data, offset)
        offset += 3
        if offset + length > len(data):
            raise _malformed(f"v2 TLV 0x{kind:02x} claims {length} bytes past the header's end")
        out.append((kind, data[offset:offset + length]))
        offset += length
    return tuple(out)


def parse_ssl_tlv(value: bytes) -> SslInfo:
    """Decode a PP2_TYPE_SSL value (for receivers and tests)."""
    if len(value) < 5:
        raise _malformed("PP2_TYPE_SSL shorter than its 5-byte client/verify prefix")
    client, verify = struct.unpack_from("!BI", value)
    subs = {kind: sub.decode("utf-8", "replace") for kind, sub in split_tlvs(value[5:])}
    return SslInfo(
        version=subs.get(PP2_SUBTYPE_SSL_VERSION), cipher=subs.get(PP2_SUBTYPE_SSL_CIPHER),
        sig_alg=subs.get(PP2_SUBTYPE_SSL_SIG_ALG), key_alg=subs.get(PP2_SUBTYPE_SSL_KEY_ALG),
        group=subs.get(PP2_SUBTYPE_SSL_GROUP), sig_scheme=subs.get(PP2_SUBTYPE_SSL_SIG_SCHEME),
        client_cn=subs.get(PP2_SUBTYPE_SSL_CN),
        cert_in_connection=bool(client & PP2_CLIENT_CERT_CONN),
        cert_in_session=bool(client & PP2_CLIENT_CERT_SESS), verify=verify)


def _check_crc32c(header: bytes, tlvs_offset: int, tlvs: tuple[tuple[int, bytes], ...]) -> None:
    offset = tlvs_offset
    for kind, value in tlvs:
        if kind == PP2_TYPE_CRC32C:
            if len(value) != 4:
                raise _malformed("PP2_TYPE_CRC32C is not 4 bytes")
            zeroed = header[:offset + 3] + b"\x00" * 4 + header[offset + 7:]
            if google_crc32c.value(zeroed) != struct.unpack("!I", value)[0]:
                raise ProxyHeaderError(Rejection.CHECKSUM, "v2 header CRC32c does not match")
        offset += 3 + len(value)


def _parse_v2(header: bytes, rest: bytes) -> Parsed:
    ver_cmd, family, length = struct.unpack_from("!BBH", header, 12)
    command = Command.LOCAL if ver_cmd & 0x0F == _CMD_LOCAL else Command.PROXY
    address_length = _ADDRESS_LENGTHS[family]
    body = header[16:]
    if length < address_length:
        if command is Command.PROXY:
            raise _malformed(f"v2 length {length} is shorter than family 0x{family:02x}'s "
                             f"{address_length} address bytes")
        # LOCAL: the receiver skips `length` bytes and must not assume any layout (2.2)
        return Parsed(2, command, None, None, (), rest)
    tlvs = split_tlvs(body[address_length:])
    _check_crc32c(header, 16 + address_length, tlvs)
    source = destination = None
    # LOCAL keeps the socket's addresses whatever the family; UNSPEC and UNIX fall back to
    # them too, which section 2.2 allows a receiver that does not implement them to do.
    if command is Command.PROXY and family >> 4 == _AF_INET:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        source = (str(ipaddress.IPv4Address(src)), sport)
        destination = (str(ipaddress.IPv4Address(dst)), dport)
    elif command is Command.PROXY and family >> 4 == _AF_INET6:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        source = (str(ipaddress.IPv6Address(src)), sport)
        destination = (str(ipaddress.IPv6Address(dst)), dport)
    return Parsed(2, command, source, destination, tlvs, rest)


class ProxyHeaderParser:
    """Feed the first bytes of a connection; returns NEED_MORE until the header is complete,
    then Parsed (with the bytes that followed the header in `rest`). Anything that is not a
    well-formed header of an accepted version raises ProxyHeaderError: the receiver must never
    guess that a header is absent (section 2)."""

    def __init__(self, accept: frozenset[int] = frozenset({1, 2}),
                 max_v2_length: int = DEFAULT_MAX_V2_LENGTH) -> None:
        if not accept or not accept <= {1, 2}:
            raise ValueError(f"PROXY protocol versions must be a non-empty subset of {{1, 2}}: "
                             f"{sorted(accept)}")
        self._accept = accept
        self._max_v2_length = max_v2_length
        self._buffer = b""

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> NeedMore | Parsed:
        self._buffer += data
        buf = self._buffer
        if not buf:
            return NEED_MORE
        if buf[0] == V2_SIGNATURE[0]:
            return self._feed_v2(buf)
        if buf[0] == V1_PREFIX[0]:
            return self._feed_v1(buf)
        raise _malformed(f"connection does not start with a PROXY header (first byte "
                         f"0x{buf[0]:02x})")

    def eof(self) -> None:
        """The peer closed (or the caller gave up) before a complete header arrived."""
        if self._buffer:
            raise ProxyHeaderError(Rejection.TRUNCATED,
                                   f"connection ended after {len(self._buffer)} header bytes")
        raise ProxyHeaderError(Rejection.MISSING, "connection ended before any PROXY header")

    def _version_accepted(self, version: int) -> None:
        if version not in self._accept:
            raise ProxyHeaderError(Rejection.VERSION,
                                   f"PROXY v{version} header where only "
                                   f"{', '.join(f'v{v}' for v in sorted(self._accept))} "
                                   f"is accepted")

    def _feed_v1(self, buf: bytes) -> NeedMore | Parsed:
        head = buf[:len(V1_PREFIX)]
        if head != V1_PREFIX[:len(head)]:
            raise _malformed("connection does not start with 'PROXY '")
        if len(head) == len(V1_PREFIX):
            self._version_accepted(1)
        end = buf.find(b"\r\n", 0, V1_MAX_LINE)
        if end < 0:
            stray = next((i for i, c in enumerate(buf[:V1_MAX_LINE])
                          if c == 0x0A or (c == 0x0D and i + 1 < len(buf))), None)
            if stray is not None:
                raise _malformed("v1 line has a lone CR or LF")
            if len(buf) >= V1_MAX_LINE:
                raise _malformed(f"v1 line has no CRLF within {V1_MAX_LINE} bytes")
            return NEED_MORE
        raw = buf[:end]
        if b"\r" in raw or b"\n" in raw or not raw.isascii():
            raise _malformed("v1 line has a lone CR or LF or a byte past ASCII")
        source, destination = _parse_v1_line(raw.decode("ascii"))
        command = Command.PROXY if source is not None else Command.LOCAL
        return Parsed(1, command, source, destination, (), buf[end + 2:])

    def _feed_v2(self, buf: bytes) -> NeedMore | Parsed:
        head = buf[:len(V2_SIGNATURE)]
        if head != V2_SIGNATURE[:len(head)]:
            raise _malformed("connection does not start with the PROXY v2 signature")
        if len(buf) < 13:
            return NEED_MORE
        if buf[12] >> 4 != 2:
            raise ProxyHeaderError(Rejection.VERSION, f"PROXY v2 signature with version nibble "
                                                      f"{buf[12] >> 4}")
        self._version_accepted(2)
        if buf[12] & 0x0F not in (_CMD_LOCAL, _CMD_PROXY):
            raise _malformed(f"v2 command 0x{buf[12] & 0x0F:x} is neither LOCAL nor PROXY")
        if len(buf) < 14:
            return NEED_MORE
        if buf[13] not in _ADDRESS_LENGTHS:
            raise _malformed(f"v2 family/transport byte 0x{buf[13]:02x} is not defined")
        if len(buf) < 16:
            return NEED_MORE
        length = struct.unpack_from("!H", buf, 14)[0]
        if length > self._max_v2_length:
            raise _malformed(f"v2 length {length} exceeds this listener's bound of "
                             f"{self._max_v2_length}")
        if len(buf) < 16 + length:
            return NEED_MORE
        return _parse_v2(buf[:16 + length], buf[16 + length:])
