"""qproxy.proxy.target: the request target as routes and backends see it, and request framing.

The nginx behaviour these tables follow was checked against nginx 1.22 (`$uri` for routing,
`$request_uri` for what it was sent); where qproxy is stricter the test says so.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

import h11
import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qproxy.config.model import Route
from qproxy.proxy.target import (
    Target,
    TargetError,
    _normalise,
    check_request_framing,
    normalise_target,
)
from qproxy.proxy.upstream import Router

# The number of examples is the loaded hypothesis profile's (100 by default): a longer fuzzing
# profile reaches these properties too.
BOUNDED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- normalisation: what routes see (path) and what the backend is sent (forward) -----------

@pytest.mark.parametrize("raw,path,forward", [
    # the issue's examples: dot-segments, plain or encoded, resolved before routing
    ("/internal/../public/x", "/public/x", "/public/x"),
    ("/public/%2e%2e/internal/secret", "/internal/secret", "/internal/secret"),
    ("/public/%2E%2E/internal/secret", "/internal/secret", "/internal/secret"),
    ("/public/.%2e/internal", "/internal", "/internal"),
    ("/public/%2e./internal", "/internal", "/internal"),
    ("/a/./b/%2e/c", "/a/b/c", "/a/b/c"),
    # RFC 3986 5.2.4: a trailing dot-segment leaves a directory
    ("/a/b/..", "/a/", "/a/"),
    ("/a/b/.", "/a/b/", "/a/b/"),
    ("/a/..", "/", "/"),
    ("/.", "/", "/"),
    ("/", "/", "/"),
    ("/a/b/c/./../../g", "/a/g", "/a/g"),
    ("/a/b/c/d;p=v/../../g;x", "/a/b/g;x", "/a/b/g;x"),
    # segments that merely hold dots are names
    ("/a/.../b", "/a/.../b", "/a/.../b"),
    ("/a/..b/.c", "/a/..b/.c", "/a/..b/.c"),
    ("/.well-known/x", "/.well-known/x", "/.well-known/x"),
    # empty segments merged (nginx merge_slashes on)
    ("//a//b/", "/a/b/", "/a/b/"),
    ("//", "/", "/"),
    ("//host/x", "/host/x", "/host/x"),  # an empty first segment, not an authority
    ("/a//..", "/", "/"),
    # an encoded slash separates for routing (as in nginx's $uri) but stays encoded when sent
    ("/a%2Fb", "/a/b", "/a%2Fb"),
    ("/a%2fb", "/a/b", "/a%2Fb"),
    ("/public/..%2Finternal", "/internal", "/internal"),
    ("/a%2F..%2Fb", "/b", "/b"),
    ("/x/a%2F..%2Fb", "/x/b", "/x%2Fb"),
    ("/a/b%2F..", "/a/", "/a/"),
    ("/a%2F", "/a/", "/a%2F"),
    # the query is kept as sent, even where it would be malformed as a path
    ("/a?x=%zz&y=/../", "/a", "/a?x=%zz&y=/../"),
    ("/a?", "/a", "/a?"),
    ("/a/../b?q=1", "/b", "/b?q=1"),
    ("/%3F?q", "/?", "/%3F?q"),
    # the fragment is dropped, as nginx does
    ("/a#frag", "/a", "/a"),
    ("/a?x#f", "/a", "/a?x"),
    ("/a%23b", "/a#b", "/a%23b"),
    # unreserved characters go plain, reserved ones as sent, the rest encoded (upper-case hex)
    ("/%41%7e%2d", "/A~-", "/A~-"),
    ("/%3b;/%3D=", "/;;/==", "/%3B;/%3D="),
    ("/%3a:@%40", "/::@@", "/%3A:@%40"),
    ("/a%20b", "/a b", "/a%20b"),
    ("/%25", "/%", "/%25"),
    ("/caf%c3%a9", "/café", "/caf%C3%A9"),
    ("/caf\u00e9", "/café", "/caf%C3%A9"),
    ("/%ff", "/\udcff", "/%FF"),
    ('/a"<>{}|^`[]b', '/a"<>{}|^`[]b', "/a%22%3C%3E%7B%7D%7C%5E%60%5B%5Db"),
    # a backslash is a character (nginx on Linux); sent encoded, as RFC 3986 has it
    ("/a\\b", "/a\\b", "/a%5Cb"),
    ("/a%5cb", "/a\\b", "/a%5Cb"),
    # absolute-form becomes origin-form
    ("http://example.com/p?q", "/p", "/p?q"),
    ("HTTPS://Example.com:8443", "/", "/"),
    ("http://example.com?x", "/", "/?x"),
    ("http://[::1]:8443/a/../b", "/b", "/b"),
    ("http://h#f", "/", "/"),
    # the asterisk form, for OPTIONS
    ("*", "*", "*"),
])
def test_normalised(raw, path, forward):
    target = normalise_target(raw)
    assert (target.path, target.forward) == (path, forward)


@pytest.mark.parametrize("raw,authority", [
    ("/a", None), ("*", None), ("http://Example.com:8443/x", "Example.com:8443"),
    ("https://[::1]/", "[::1]"), ("http://h:/", "h:"), ("http://[fe80::1%25eth0]:1/", "[fe80::1%25eth0]:1"),
])
def test_authority_of_an_absolute_target(raw, authority):
    assert normalise_target(raw).authority == authority


def test_target_is_a_frozen_slotted_value():
    target = normalise_target("/a")
    assert target == Target("/a", "/a") and hash(target) == hash(Target("/a", "/a"))
    with pytest.raises(AttributeError):
        target.path = "/b"  # type: ignore[misc]
    assert not hasattr(target, "__dict__")
    assert normalise_target("*").is_asterisk and not target.is_asterisk


@pytest.mark.parametrize("raw,why", [
    # climbing above the root (nginx: 400 too)
    ("/../x", "root"), ("/..", "root"), ("/a/../../x", "root"), ("/%2e%2e", "root"),
    ("/%2E%2E/x", "root"), ("/a/%2e%2e%2f..", "root"), ("/a/./../..", "root"),
    ("/.//..", "root"), ("/a%2F..%2F..%2Fb", "root"), ("http://h/../x", "root"),
    # NUL and control characters, plain or decoded
    ("/%00", "control"), ("/a%0d%0aX-Injected:%201", "control"), ("/%7f", "control"),
    ("/%1f", "control"), ("/a\x00b", "control"), ("/a\tb", "control"), ("/a b", "control"),
    ("/a\r\nb", "control"), ("/a?x\x01", "control"), ("/a?x y", "control"),
    ("/a?x\r\nHost: evil", "control"),
    # malformed percent-encoding
    ("/%zz", "percent"), ("/%4", "percent"), ("/a%", "percent"), ("/%%41", "percent"),
    ("/%g0", "percent"), ("/%0g", "percent"), ("/%\u00e9\u00e9", "percent"),
    # what some backends read as '..' though we would not (stricter than nginx)
    ("/public/..\\internal", "backends"), ("/a\\..\\b", "backends"),
    ("/a%5C..%5Cb", "backends"), ("/public/..;/internal", "backends"),
    ("/..;x=1/a", "backends"), ("/a/..%5c", "backends"), ("/a..;%5C%2e%2e%2f", "backends"),
    ("/.;/x", "backends"), ("/a\\.\\b", "backends"),
    # not a request target we serve
    ("", "form"), ("a/b", "form"), ("example.com:443", "form"), ("?x", "form"),
    ("**", "form"), ("*/a", "form"), ("ftp://h/p", "form"), ("http:/x", "form"),
    ("http://", "host"), ("http:///p", "host"), ("http://u@h/", "user"),
    ("http://u:p@h/", "user"), ("http://h h/", "host"), ("http://h\"/", "host"),
    ("http://:80/", "host"), ("http://[::1/", "host"), ("http://[::1]x/", "host"),
    ("http://h:8x/", "host"), ("http://h:1:2/", "host"), ("http://]/", "host"),
    ("\ud800", "text"), ("/\ud800", "text"),
])
def test_refused_with_400(raw, why):
    with pytest.raises(TargetError) as caught:
        normalise_target(raw)
    assert caught.value.status == 400
    words = {"root": "above the root", "control": "control", "percent": "percent-encoding",
             "backends": "'.' or '..'", "form": "not origin-form", "host": "host",
             "user": "user information", "text": "not valid text"}
    assert words[why] in str(caught.value)


@pytest.mark.parametrize("method", ["OPTIONS", None])
def test_asterisk_for_options(method):
    assert normalise_target("*", method=method) == Target("*", "*")


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "options"])
def test_asterisk_refused_for_other_methods(method):
    with pytest.raises(TargetError) as caught:
        normalise_target("*", method=method)
    assert caught.value.status == 400 and "only OPTIONS" in str(caught.value)


def test_target_error_carries_status_and_reason():
    error = TargetError(501, "why")
    assert error.status == 501 and str(error) == "why" and isinstance(error, Exception)


# --- routing on the normalised path ---------------------------------------------------------

ROUTES = Router((Route(path_prefix="/internal/", upstream="internal"),
                 Route(path_prefix="/public/", upstream="public"),
                 Route(path_prefix="/", upstream="default")))


def _backend_view_decoding(forward: str) -> str:
    """How a backend that decodes everything (`%2F` included) and then resolves dot-segments
    reads the path it is sent (werkzeug, most frameworks): by the reference below."""
    path = forward.partition("?")[0]
    return rfc3986_remove_dot_segments(
        _merge_slashes(unquote_to_bytes(path).decode("utf-8", "surrogateescape")))[0]


def _backend_segments(forward: str, separators: str) -> list[str]:
    """The segments a backend sees that splits at `separators` (in the decoded path) and,
    like Tomcat, cuts `;` parameters off each segment."""
    path = unquote_to_bytes(forward.partition("?")[0]).decode("utf-8", "surrogateescape")
    return [s.partition(";")[0] for s in re.split(f"[{re.escape(separators)}]", path)]


ATTACKS = [
    "/internal/../public/x", "/public/%2e%2e/internal/secret", "/public/..%2Finternal/secret",
    "/public/%2e%2e%2finternal/secret", "/public%2F..%2Finternal/secret", "//internal/secret",
    "/public//../internal/secret", "/./internal/secret", "/public/./../internal/secret",
    "/internal%2Fsecret", "/public/x/..%2F..%2Finternal", "/public/%2E%2E/%2E%2E/internal",
    "http://a/public/../internal/secret", "/public/.%2E/internal", "/interna%6C/secret",
]


@pytest.mark.parametrize("raw", ATTACKS)
def test_routes_match_what_the_backend_will_serve(raw):
    _check_views(raw)


def _check_views(raw: str) -> None:
    """The route picked from `.path` is the one a backend's reading of `.forward` falls
    under, and no reading of `.forward` (decoding `%2F` or not, `\\` as a separator or not,
    `;` parameters cut or not) holds a dot-segment left for the backend to resolve."""
    try:
        target = normalise_target(raw)
    except TargetError as error:
        assert error.status == 400
        return
    assert _backend_view_decoding(target.forward) == target.path
    assert ROUTES.match(None, target.path) == ROUTES.match(None,
                                                         _backend_view_decoding(target.forward))
    for separators in ("/", "/\\"):
        assert not {".", ".."} & set(_backend_segments(target.forward, separators)[1:])
    # %2F kept as data: split at the slashes sent plain only
    for segment in target.forward.partition("?")[0].split("/")[1:]:
        assert unquote_to_bytes(segment) not in (b".", b"..")


@pytest.mark.parametrize("raw,route", [
    ("/internal/../public/x", "public"),
    ("/public/%2e%2e/internal/secret", "internal"),
    ("/public/..%2Finternal/secret", "internal"),
    ("//internal/secret", "internal"),
    ("/internal%2Fsecret", "internal"),
    ("/interna%6C/secret", "internal"),
    ("/public/x", "public"),
    ("/publicity", "default"),
])
def test_the_issues_examples_route_by_the_normalised_path(raw, route):
    assert ROUTES.match(None, normalise_target(raw).path) == route


# --- properties, against a reference written from RFC 3986 5.2.4 ---------------------------

def rfc3986_remove_dot_segments(path: str) -> tuple[str, bool]:
    """RFC 3986 section 5.2.4's pseudo-code, step by step, on a string buffer; also says
    whether a '..' found the output empty (climbed above the root)."""
    inp, out, climbed = path, "", False
    while inp:
        if inp.startswith("../"):                      # A
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):                    # B
            inp = inp[2:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../") or inp == "/..":   # C
            inp = "/" + inp[4:] if inp.startswith("/../") else "/"
            if not out:
                climbed = True
            out = out[:out.rfind("/")] if "/" in out else ""
        elif inp in (".", ".."):                       # D
            inp = ""
        else:                                          # E
            cut = inp.find("/", 1)
            segment, inp = (inp, "") if cut < 0 else (inp[:cut], inp[cut:])
            out += segment
    return out, climbed


def _merge_slashes(path: str) -> str:
    return re.sub("/{2,}", "/", path)


def test_the_reference_follows_the_rfcs_own_examples():
    # RFC 3986 5.2.4's worked examples and a few of 5.4.1's, as paths
    assert rfc3986_remove_dot_segments("/a/b/c/./../../g") == ("/a/g", False)
    assert rfc3986_remove_dot_segments("mid/content=5/../6") == ("mid/6", False)
    assert rfc3986_remove_dot_segments("/b/c/../..") == ("/", False)
    assert rfc3986_remove_dot_segments("/b/c/../../../g") == ("/g", True)
    assert rfc3986_remove_dot_segments("/b/c/./g/.") == ("/b/c/g/", False)


_SEGMENT_PIECES = ["a", "b", "z9", ".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "%41", "~", "-",
                   "%2F", "%2f", "", "...", "a.b", "%20", "%25", "%3B", ";", "=", "%C3%A9"]
_segments = st.lists(st.lists(st.sampled_from(_SEGMENT_PIECES), max_size=3).map("".join),
                     max_size=8)
_paths = _segments.map(lambda parts: "/" + "/".join(parts))


@BOUNDED
@given(_paths)
def test_agrees_with_the_rfc_3986_reference(raw):
    decoded = unquote_to_bytes(raw).decode("utf-8", "surrogateescape")
    expected, climbed = rfc3986_remove_dot_segments(_merge_slashes(decoded))
    try:
        target = normalise_target(raw)
    except TargetError as error:
        assert error.status == 400
        if "above the root" in str(error):
            assert climbed
        else:  # '..;x': refused though the RFC resolves it, since servlet containers climb
            assert "'..'" in str(error)
            assert any(s not in (".", "..") and {".", ".."} & set(re.split(r"[\\;]", s))
                       for s in decoded.split("/"))
        return
    assert not climbed
    assert target.path == expected


_ATTACK_PIECES = _SEGMENT_PIECES + ["%5C", "\\", "..;", ";x", "%3b", "%252e", "%2e%2e%2f",
                                    "internal", "public", "%2F%2E%2E"]
_attacks = st.lists(st.lists(st.sampled_from(_ATTACK_PIECES), max_size=4).map("".join),
                    max_size=8).map(lambda parts: "/" + "/".join(parts))


@BOUNDED
@given(_attacks)
def test_no_reading_of_the_forwarded_target_leaves_its_route(raw):
    _check_views(raw)


_NASTY = st.sampled_from(["/", ".", "..", "%", "%2", "%2e", "%2E", "%2F", "%2f", "%00", "%5C",
                          "\\", ";", "?", "#", " ", "\x00", "\t", "\r\n", "a", "é", "\udcff",
                          "\ud800", "%ff", "%zz", "http://", "*", "@", "[::1]", ":"])
_garbage = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec=None, categories=None), max_size=40),
    st.lists(_NASTY, max_size=12).map("".join),
    st.lists(_NASTY, max_size=12).map(lambda xs: "/" + "".join(xs)),
    st.lists(_NASTY, max_size=12).map(lambda xs: "http://h" + "".join(xs)),
)


@BOUNDED
@given(_garbage)
def test_only_target_errors_and_normal_forms(raw):
    try:
        target = normalise_target(raw)
    except TargetError as error:
        assert error.status == 400 and str(error)
        return
    if target.is_asterisk:
        assert target.forward == "*"
        return
    # no dot-segments and no empty segments but a trailing one, in the path routes see
    segments = target.path.split("/")
    assert segments[0] == "" and not {".", ".."} & set(segments)
    assert "" not in segments[1:-1]
    # the forwarded target fits a request line and means the same again: idempotent
    assert target.forward.startswith("/")
    assert not re.search(r"[\x00-\x20\x7f]", target.forward)
    assert normalise_target(target.forward) == Target(target.path, target.forward)


@BOUNDED
@given(_paths)
def test_normalising_twice_changes_nothing(raw):
    try:
        target = normalise_target(raw)
    except TargetError:
        return
    again = normalise_target(target.forward)
    assert again == target
    assert _backend_view_decoding(target.forward) == target.path


# --- request framing, against what httptools lets through -----------------------------------

class _Fields:
    """httptools callbacks that keep the header fields as on_header gets them."""

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))


def _through_httptools(head: bytes) -> tuple[list[tuple[bytes, bytes]], str] | None:
    """The fields httptools hands over for a request head and its HTTP version, or None if
    it refuses the head itself."""
    sink = _Fields()
    parser = httptools.HttpRequestParser(sink)
    try:
        parser.feed_data(head)
    except httptools.HttpParserError:
        return None
    return sink.fields, parser.get_http_version()


def _head(*fields: bytes, version: bytes = b"1.1") -> bytes:
    return b"POST / HTTP/" + version + b"\r\nHost: a\r\n" + b"".join(
        f + b"\r\n" for f in fields) + b"\r\n"


def _outcome(head: bytes) -> int | str:
    """'llhttp' if httptools refuses it, else the status we refuse with, or 200."""
    parsed = _through_httptools(head)
    if parsed is None:
        return "llhttp"
    fields, version = parsed
    try:
        check_request_framing(fields, http_version=version)
    except TargetError as error:
        return error.status
    return 200


@pytest.mark.parametrize("fields,expected", [
    # what llhttp lets through and we must refuse
    ([b"Transfer-Encoding: gzip, chunked"], 501),
    ([b"Transfer-Encoding: identity, chunked"], 501),
    ([b"Transfer-Encoding: , chunked"], 501),
    ([b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"], 501),
    ([b"Transfer-Encoding: identity", b"Transfer-Encoding: chunked"], 501),
    # what llhttp refuses by itself (kept here so a change of llhttp shows)
    ([b"Transfer-Encoding: chunked, chunked"], "llhttp"),
    ([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], "llhttp"),
    ([b"Transfer-Encoding: gzip"], "llhttp"),
    ([b"Transfer-Encoding: chunked, gzip"], "llhttp"),
    ([b"Transfer-Encoding: chunked", b"Content-Length: 3"], "llhttp"),
    ([b"Content-Length: 3", b"Transfer-Encoding: gzip, chunked"], "llhttp"),
    ([b"Content-Length: 3", b"Content-Length: 3"], "llhttp"),
    ([b"Content-Length: 3", b"Content-Length: 4"], "llhttp"),
    ([b"Content-Length: 3, 3"], "llhttp"),
    ([b"Content-Length: +3"], "llhttp"),
    ([b"Transfer-Encoding : chunked"], "llhttp"),
    # accepted
    ([b"Transfer-Encoding: chunked"], 200),
    ([b"Transfer-Encoding: CHUNKED"], 200),
    ([b"Transfer-Encoding: \tchunked"], 200),
    ([b"Content-Length: 3"], 200),
    ([b"Content-Length: 3 "], 200),
    ([b"Content-Length: 0"], 200),
    ([], 200),
    # names that only look like framing fields are not framing (and are dropped later)
    ([b"Content_Length: 3", b"Transfer_Encoding: gzip"], 200),
])
def test_framing_against_what_httptools_passes(fields, expected):
    assert _outcome(_head(*fields)) == expected


def test_transfer_encoding_in_http_1_0_is_refused():
    assert _outcome(_head(b"Transfer-Encoding: chunked", version=b"1.0")) == 400
    assert _outcome(_head(b"Content-Length: 3", version=b"1.0")) == 200


@pytest.mark.parametrize("fields,status,words", [
    ([(b"Transfer-Encoding", b"gzip, chunked")], 501, "gzip, chunked"),
    ([(b"transfer-encoding", b"chunked, chunked")], 501, "single"),
    ([(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")], 501, "single"),
    ([(b"Transfer-Encoding", b"")], 501, "single"),
    ([(b"Transfer-Encoding", b"chunked;x=1")], 501, "single"),
    ([(b"Transfer-Encoding", b"\xffchunked")], 501, "single"),
    ([(b"Transfer-Encoding", b" chunked "), (b"Content-Length", b"3")], 400,
     "both Transfer-Encoding and Content-Length"),
    ([(b"Content-Length", b"3"), (b"CONTENT-LENGTH", b"4")], 400, "differing"),
    ([(b"Content-Length", b"3"), (b"Content-Length", b" 3")], 400, "more than one"),
    ([(b"Content-Length", b"-1")], 400, "malformed"),
    ([(b"Content-Length", b"")], 400, "malformed"),
    ([(b"Content-Length", b"\xd9\xa3")], 400, "malformed"),  # an Arabic-Indic digit
    ([(b"Content-Length", b"0x10")], 400, "malformed"),
])
def test_framing_refusals_on_fields_given_directly(fields, status, words):
    with pytest.raises(TargetError) as caught:
        check_request_framing(fields)
    assert caught.value.status == status and words in str(caught.value)


def test_framing_accepts_plain_requests():
    check_request_framing([])
    check_request_framing([(b"Host", b"a"), (b"Content-Length", b"12")])
    check_request_framing([(b"Transfer-Encoding", b"Chunked")])


_codings = st.lists(st.sampled_from(["chunked", "CHUNKED", "gzip", "identity", "deflate", "br",
                                     "compress", "x", ""]), min_size=1, max_size=3)
_te_fields = st.lists(_codings.map(", ".join), min_size=1, max_size=3)


@BOUNDED
@given(_te_fields)
def test_codings_refused_as_h11_refuses_them(values):
    """Differential: of the Transfer-Encoding fields llhttp lets through, we refuse (501)
    exactly those h11, an independent parser, refuses as unsupported."""
    head = _head(*(b"Transfer-Encoding: " + v.encode() for v in values))
    ours = _outcome(head)
    if ours == "llhttp":
        return
    server = h11.Connection(h11.SERVER)
    server.receive_data(head)
    try:
        server.next_event()
        theirs = 200
    except h11.RemoteProtocolError as error:
        theirs = error.error_status_hint
    assert ours == theirs


def _either(function, raw):
    try:
        return function(raw)
    except TargetError as error:
        return error.status


@BOUNDED
@given(st.one_of(_garbage, _paths, _paths.map(lambda p: p.replace("%", "")),
                 st.from_regex(r"\A(/[a-z.~!$;=:@-]{0,4}){0,5}/?(\?[ -~]{0,6})?(#.?)?\Z")))
def test_the_shortcut_for_normal_targets_changes_no_answer(raw):
    assert _either(normalise_target, raw) == _either(_normalise, raw)


@pytest.mark.parametrize("raw", ["/", "/api/firmware/latest?device=esp32&v=1.2.3", "/a/b.c/",
                                 "/a?x=%zz", "/a?", "/a#f", "/x;a=b/c:d@e", "/;.", "/a.;/b",
                                 "/a;.x/b", "/#\ud800", "/a?#\ud800"])
def test_the_shortcut_on_common_targets(raw):
    assert _either(normalise_target, raw) == _either(_normalise, raw)
