"""PROXY protocol codec (qproxy/proxy/proxy_protocol.py): builder, strict incremental parser,
vectors from HAProxy's doc/proxy-protocol.txt, and fuzzing."""

from __future__ import annotations

import ipaddress
import struct

import google_crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qproxy.proxy import proxy_protocol as pp
from qproxy.proxy.proxy_protocol import (
    NEED_MORE, Command, Parsed, ProxyHeaderError, ProxyHeaderParser, Rejection, SslInfo,
)

PQ_SSL = SslInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", sig_alg="ML-DSA-65",
                 key_alg="ML-DSA-65", group="X25519MLKEM768", sig_scheme="mldsa65",
                 client_cn="device-0042", cert_in_connection=True, verify=0)


def parse_all(data: bytes, **kw) -> Parsed:
    result = ProxyHeaderParser(**kw).feed(data)
    assert isinstance(result, Parsed), result
    return result


def refusal(data: bytes, **kw) -> Rejection:
    with pytest.raises(ProxyHeaderError) as info:
        parser = ProxyHeaderParser(**kw)
        if parser.feed(data) is NEED_MORE:
            parser.eof()
    return info.value.reason


# ------------------------------------------------------------- CRC32c (RFC 3720 B.4 vectors)

@pytest.mark.parametrize("data, crc", [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
])
def test_crc32c_matches_rfc3720_vectors(data, crc):
    assert google_crc32c.value(data) == crc


# ------------------------------------------------------------- builder, byte for byte

def test_v2_ipv4_header_is_laid_out_as_in_haproxy_doc():
    header = pp.build_v2(("192.168.0.1", 56324), ("192.168.0.11", 443), alpn=None,
                         authority=None, ssl=None, crc32c=False)
    # 12-byte signature, 0x21 = version 2 / PROXY, 0x11 = TCP over IPv4, length 12
    assert header == (b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a" + b"\x21\x11\x00\x0c"
                      + bytes([192, 168, 0, 1]) + bytes([192, 168, 0, 11])
                      + struct.pack("!HH", 56324, 443))


def test_v2_ipv6_header_family_and_length():
    header = pp.build_v2(("2001:db8::1", 1), ("::1", 8443), alpn=None, authority=None,
                         ssl=None, crc32c=False)
    assert header[12:16] == b"\x21\x21\x00\x24"
    assert len(header) == 16 + 36


def test_v2_ssl_tlv_layout_byte_for_byte():
    ssl = SslInfo(version="TLSv1.3", group="X25519MLKEM768", verify=1)
    header = pp.build_v2(("10.0.0.1", 5), ("10.0.0.2", 6), alpn=None, authority=None,
                         ssl=ssl, crc32c=False)
    tlv = header[16 + 12:]
    body = (b"\x01" + b"\x00\x00\x00\x01"                # client = PP2_CLIENT_SSL, verify = 1
            + b"\x21\x00\x07TLSv1.3" + b"\x26\x00\x0eX25519MLKEM768")
    assert tlv == b"\x20" + struct.pack("!H", len(body)) + body


def test_v2_every_tlv_round_trips():
    header = pp.build_v2(("203.0.113.7", 40000), ("198.51.100.1", 8443), alpn="h2",
                         authority="ota.example", ssl=PQ_SSL, crc32c=True)
    parsed = parse_all(header + b"\x16\x03\x01")
    assert (parsed.version, parsed.command) == (2, Command.PROXY)
    assert parsed.source == ("203.0.113.7", 40000)
    assert parsed.destination == ("198.51.100.1", 8443)
    assert parsed.rest == b"\x16\x03\x01"
    assert parsed.tlv(pp.PP2_TYPE_ALPN) == b"h2"
    assert parsed.tlv(pp.PP2_TYPE_AUTHORITY) == b"ota.example"
    assert [t for t, _ in parsed.tlvs] == [0x01, 0x02, 0x20, 0x03]
    ssl = pp.parse_ssl_tlv(parsed.tlv(pp.PP2_TYPE_SSL))
    assert ssl == SslInfo(**{**PQ_SSL.__dict__, "cert_in_session": True})
    client = parsed.tlv(pp.PP2_TYPE_SSL)[0]
    assert client == pp.PP2_CLIENT_SSL | pp.PP2_CLIENT_CERT_CONN | pp.PP2_CLIENT_CERT_SESS


def test_crc32c_is_over_the_header_with_the_field_zeroed():
    header = pp.build_v2(("10.0.0.1", 1), ("10.0.0.2", 2), alpn=None, authority=None,
                         ssl=None, crc32c=True)
    assert header[-7:-4] == b"\x03\x00\x04"
    zeroed = header[:-4] + bytes(4)
    assert struct.unpack("!I", header[-4:])[0] == google_crc32c.value(zeroed)


def test_a_flipped_bit_fails_the_checksum():
    header = bytearray(pp.build_v2(("10.0.0.1", 1), ("10.0.0.2", 2), alpn="h2",
                                   authority=None, ssl=None, crc32c=True))
    header[17] ^= 0x01
    assert refusal(bytes(header)) is Rejection.CHECKSUM


def test_ipv4_mapped_source_is_sent_as_ipv4():
    header = pp.build_v2(("::ffff:127.0.0.1", 5000), ("127.0.0.1", 8443), alpn=None,
                         authority=None, ssl=None, crc32c=False)
    assert parse_all(header).source == ("127.0.0.1", 5000)


def test_mixed_families_are_sent_as_ipv6():
    header = pp.build_v2(("127.0.0.1", 5000), ("::1", 8443), alpn=None, authority=None,
                         ssl=None, crc32c=False)
    parsed = parse_all(header)
    assert header[13] == 0x21
    assert parsed.source == ("::ffff:7f00:1", 5000) and parsed.destination == ("::1", 8443)


def test_unknown_addresses_build_a_local_header():
    header = pp.build_v2(None, None, alpn=None, authority=None, ssl=None, crc32c=False)
    assert header == pp.V2_SIGNATURE + b"\x20\x00\x00\x00"
    parsed = parse_all(header)
    assert parsed.command is Command.LOCAL and parsed.source is None


# ------------------------------------------------------------- v1 vectors (doc section 2.1)

def test_v1_doc_example():
    parsed = parse_all(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n")
    assert parsed.version == 1 and parsed.command is Command.PROXY
    assert parsed.source == ("192.168.0.1", 56324)
    assert parsed.destination == ("192.168.0.11", 443)
    assert parsed.rest == b"GET / HTTP/1.1\r\n"


def test_v1_longest_tcp6_line_parses():
    line = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
            b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
    assert len(line) == 104
    assert parse_all(line).source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)


def test_v1_unknown_short_and_worst_case_forms_keep_socket_address():
    worst = (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
             b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
    assert len(worst) == 107
    for line in (b"PROXY UNKNOWN\r\n", worst):
        parsed = parse_all(line + b"x")
        assert parsed.source is None and parsed.command is Command.LOCAL and parsed.rest == b"x"


def test_v1_round_trip_through_builder():
    for src, dst in ((("10.1.2.3", 1), ("10.9.9.9", 443)), (("2001:db8::5", 7), ("::1", 8))):
        parsed = parse_all(pp.build_v1(src, dst))
        assert parsed.source == src and parsed.destination == dst


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.168.0.01 192.168.0.11 56324 443\r\n",   # leading zero in address
    b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n",   # leading zero in port
    b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",    # port out of range
    b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n",   # two spaces
    b"PROXY TCP4 ::1 ::1 1 2\r\n",                           # family mismatch
    b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
    b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",                  # scope id
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",        # a field missing
    b"PROXY UDP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",      # bare LF
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\rX\r\n",  # lone CR
    b"PROXY TCP4 192.168.0.1 192.168.0.11 +5 443\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 \xd9\xa1 443\r\n",   # Arabic-Indic digit
    b"proxy TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
])
def test_v1_malformed_lines_are_refused(line):
    assert refusal(line) is Rejection.MALFORMED


def test_v1_without_crlf_in_107_bytes_is_refused_at_the_limit():
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN " + b"a" * 92) is NEED_MORE   # 106 bytes
    with pytest.raises(ProxyHeaderError) as info:
        parser.feed(b"a")
    assert info.value.reason is Rejection.MALFORMED


# ------------------------------------------------------------- v2 strictness

def _v2(ver_cmd: int, family: int, body: bytes, length: int | None = None) -> bytes:
    return pp.V2_SIGNATURE + struct.pack("!BBH", ver_cmd, family,
                                         len(body) if length is None else length) + body


ADDR4 = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 1000, 443)


@pytest.mark.parametrize("data, reason", [
    (_v2(0x11, 0x11, ADDR4), Rejection.VERSION),              # version 1 nibble
    (_v2(0x31, 0x11, ADDR4), Rejection.VERSION),
    (_v2(0x22, 0x11, ADDR4), Rejection.MALFORMED),            # command 2
    (_v2(0x21, 0x13, ADDR4), Rejection.MALFORMED),            # transport 3
    (_v2(0x21, 0x41, ADDR4), Rejection.MALFORMED),            # family 4
    (_v2(0x21, 0x11, ADDR4[:8]), Rejection.MALFORMED),        # short address block
    (_v2(0x21, 0x11, ADDR4 + b"\x01\x00\x05ab"), Rejection.MALFORMED),   # TLV runs past the end
    (_v2(0x21, 0x11, ADDR4 + b"\x01\x00"), Rejection.MALFORMED),         # TLV cut in its header
    (_v2(0x21, 0x11, ADDR4 + b"\x03\x00\x02ab"), Rejection.MALFORMED),   # CRC32C of 2 bytes
    (_v2(0x21, 0x11, b"", length=5000), Rejection.MALFORMED),   # past our length bound
    (pp.V2_SIGNATURE[:11] + b"X" + b"\x21\x11\x00\x00", Rejection.MALFORMED),
    (_v2(0x21, 0x11, ADDR4)[:20], Rejection.TRUNCATED),       # connection ends mid-header
    (b"\x16\x03\x01\x02\x00\x01", Rejection.MALFORMED),       # a TLS ClientHello, no header
    (b"GET / HTTP/1.1\r\n\r\n", Rejection.MALFORMED),
    (b"", Rejection.MISSING),
])
def test_v2_strict_refusals(data, reason):
    assert refusal(data) is reason


def test_v2_local_keeps_socket_address_and_skips_whatever_length_says():
    parsed = parse_all(_v2(0x20, 0x11, ADDR4) + b"tls")
    assert parsed.command is Command.LOCAL and parsed.source is None and parsed.rest == b"tls"
    parsed = parse_all(_v2(0x20, 0x11, b"\x00" * 3) + b"tls")   # shorter than the family's block
    assert parsed.command is Command.LOCAL and parsed.rest == b"tls"


def test_v2_unspec_and_unix_families_fall_back_to_socket_address():
    assert parse_all(_v2(0x21, 0x00, b"")).source is None
    assert parse_all(_v2(0x21, 0x31, bytes(216))).source is None


def test_accepted_versions_are_enforced():
    v1 = pp.build_v1(("10.0.0.1", 1), ("10.0.0.2", 2))
    v2 = pp.build_v2(("10.0.0.1", 1), ("10.0.0.2", 2), alpn=None, authority=None, ssl=None,
                     crc32c=False)
    assert refusal(v1, accept=frozenset({2})) is Rejection.VERSION
    assert refusal(v2, accept=frozenset({1})) is Rejection.VERSION
    assert parse_all(v1, accept=frozenset({1})).version == 1
    with pytest.raises(ValueError):
        ProxyHeaderParser(accept=frozenset())


def test_unknown_tlvs_are_kept_not_refused():
    parsed = parse_all(_v2(0x21, 0x11, ADDR4 + b"\xe0\x00\x02hi" + b"\x04\x00\x00"))
    assert parsed.tlvs == ((0xE0, b"hi"), (0x04, b""))


# ------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=12))
def test_random_bytes_never_crash_the_parser(data, cuts):
    parser = ProxyHeaderParser()
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            chunk, pos = data[pos:pos + cut], pos + cut
            if not isinstance(parser.feed(chunk), type(NEED_MORE)):
                return
        parser.eof()
    except ProxyHeaderError:
        return


@st.composite
def valid_headers(draw):
    v4 = st.ip_addresses(v=4).map(str)
    v6 = st.ip_addresses(v=6).map(str)
    hosts = draw(st.one_of(st.tuples(v4, v4), st.tuples(v6, v6)))
    ports = draw(st.tuples(st.integers(0, 65535), st.integers(0, 65535)))
    src, dst = (hosts[0], ports[0]), (hosts[1], ports[1])
    if draw(st.booleans()):
        return pp.build_v1(src, dst)
    text = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), max_size=20)
    ssl = draw(st.none() | st.builds(SslInfo, version=text, cipher=text, group=text,
                                     client_cn=text, verify=st.integers(0, 2**32 - 1)))
    return pp.build_v2(src, dst, alpn=draw(st.none() | st.binary(max_size=10)),
                       authority=draw(st.none() | text), ssl=ssl, crc32c=draw(st.booleans()))


def test_v1_with_mixed_families_says_both_in_v6():
    # An IPv4-mapped IPv6 address is taken as IPv4: the line must still be of one family.
    header = pp.build_v1(("::", 0), ("::ffff:0.0.0.0", 0))
    assert header.startswith(b"PROXY TCP6 :: ::ffff:0")
    host, port = parse_all(header).destination
    assert ipaddress.ip_address(host) == ipaddress.ip_address("::ffff:0.0.0.0") and port == 0


@FUZZ
@given(valid_headers(), st.binary(max_size=20), st.data())
def test_any_split_of_a_valid_header_parses_identically(header, tail, data):
    whole = parse_all(header + tail)
    assert whole.rest == tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(header) + len(tail)), max_size=8)))
    parser = ProxyHeaderParser()
    result = NEED_MORE
    fed = 0
    for cut in [*cuts, len(header) + len(tail)]:
        if cut < fed:
            continue
        result = parser.feed((header + tail)[fed:cut])
        fed = cut
        if isinstance(result, Parsed):
            break
    assert isinstance(result, Parsed)
    got_rest = result.rest + (header + tail)[fed:]
    assert (result.version, result.source, result.destination, result.tlvs) == (
        whole.version, whole.source, whole.destination, whole.tlvs)
    assert got_rest == tail
