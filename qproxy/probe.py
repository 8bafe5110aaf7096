"""A post-quantum `openssl s_client`: connect to an HTTPS endpoint and summarise the TLS session.

One full handshake plus an HTTP/1.1 request (TLS 1.3 session tickets only arrive after the
handshake, so the response is read before the session is kept), then, unless told otherwise,
a second handshake offering that session to see whether the server resumes it.

pyOpenSSL exposes no SSL_get_peer_signature_type_nid, so the peer's signature algorithm is
derived from the key of the leaf certificate it presented (`policy.sigalg_for_key`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar
from urllib.parse import urlsplit

from OpenSSL import SSL

from qproxy.errors import QProxyError
from qproxy.tls import certinfo, openssl_ext, policy
from qproxy.tls import ocsp as tls_ocsp

_T = TypeVar("_T")

_ALPN = b"http/1.1"
# Enough for any status line and headers; the body only matters as the end of the exchange.
_MAX_RESPONSE = 1 << 20
_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? (\d{3})\b")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r\n", re.IGNORECASE)

# What the client sees is the alert the server sent, not the server's own reason; these turn
# the alert into the likely cause. Matched as substrings of OpenSSL's lowercase reason.
_REASON_HINTS: tuple[tuple[str, str], ...] = (
    ("certificate required", "the server requires a client certificate: pass --cert and --key"),
    ("unknown ca", "the server does not trust the issuer of the client certificate (--cert)"),
    ("bad certificate", "the server rejected the client certificate (--cert)"),
    ("unsupported certificate", "the server rejected the client certificate (--cert)"),
    ("certificate unknown", "the server rejected the client certificate (--cert)"),
    ("protocol version", "the server speaks neither TLS 1.2 nor TLS 1.3"),
    ("unsupported protocol", "the server speaks neither TLS 1.2 nor TLS 1.3"),
    ("no application protocol", "the server refused ALPN http/1.1"),
    ("wrong version number", "the server did not answer with TLS: is this a plain-HTTP port?"),
    ("packet length too long", "the server did not answer with TLS: is this a plain-HTTP port?"),
    ("record layer failure", "the server did not answer with TLS: is this a plain-HTTP port?"),
)


class ProbeError(QProxyError):
    """The probe could not get a TLS session; the message says what to change."""


@dataclass(frozen=True)
class ChainEntry:
    subject: str
    key: str
    """certinfo.describe_key of the certificate's key, e.g. 'ML-DSA-65'."""


@dataclass(frozen=True)
class ProbeResult:
    host: str
    port: int
    servername: str | None
    """The SNI sent; None for an IP address target without --servername."""
    protocol: str
    group: str | None
    cipher: str | None
    peer_sigalg: str | None
    """Derived from the leaf certificate's key, see the module docstring."""
    peer_key: str | None
    alpn: str | None
    chain: tuple[ChainEntry, ...]
    """As the server sent it, leaf first."""
    verify_ok: bool | None
    """None when no CA file was given: nothing to verify against."""
    verify_error: str | None
    resumed: bool | None
    """None when resumption was not tried or the second connection failed (resume_error)."""
    http_status: int | None
    handshake_ms: float
    http_error: str | None = None
    resume_error: str | None = None
    client_cert_requested: bool = False
    client_cert_sent: bool = False
    ocsp: str | None = None
    """The stapled OCSP response as checked against the presented chain; None: none stapled."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str

    @property
    def authority(self) -> str:
        """host[:port] as the Host header and messages write it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"


@dataclass(frozen=True)
class _Plan:
    """Everything one connection attempt needs; diagnosis re-runs it with parts relaxed."""

    target: Target
    sni: str | None
    verify_name: str
    groups: str | None
    sigalgs: str | None
    cafile: str | None
    cert: str | None
    key: str | None
    timeout: float


@dataclass
class _Link:
    conn: SSL.Connection
    sock: socket.socket
    deadline: float
    handshake_ms: float = 0.0
    certificate_requested: bool = False
    stapled: bytes = b""


def parse_target(url: str) -> Target:
    """`https://host[:port][/path]`, `https://[::1]:8443/`, or a bare `host:port` like s_client."""
    text = url.strip()
    split = urlsplit(text if "://" in text else "https://" + text)
    if split.scheme.lower() != "https":
        raise ProbeError(f"{url!r}: only https:// URLs can be probed")
    try:
        port = split.port or 443
    except ValueError as exc:
        raise ProbeError(f"{url!r}: bad port ({exc})") from None
    if not split.hostname:
        raise ProbeError(f"{url!r}: no host name")
    path = split.path or "/"
    if split.query:
        path += "?" + split.query
    return Target(split.hostname, port, path)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def probe(
    url: str,
    *,
    groups: str | None = None,
    sigalgs: str | None = None,
    cafile: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    servername: str | None = None,
    timeout: float = 10.0,
    resume: bool = True,
    http_path: str | None = None,
) -> ProbeResult:
    """Handshake with `url`, send one HTTP/1.1 GET, and report what was negotiated.

    `groups`/`sigalgs` are OpenSSL lists (None: OpenSSL's defaults). `timeout` bounds each
    connection from TCP connect to the end of the response. A failed certificate
    verification is reported in the result, not raised, as s_client does."""
    target = parse_target(url)
    if timeout <= 0:
        raise ProbeError(f"timeout must be positive, not {timeout:g}")
    path = _request_path(http_path or target.path)
    # SNI never carries an IP address (RFC 6066); an explicit --servername is sent as given.
    if servername is None and not _is_ip(target.host):
        servername = target.host
    plan = _Plan(target, _sni_text(servername), servername or target.host, groups, sigalgs,
                 cafile, cert, key, timeout)
    context = _client_context(plan)
    try:
        link = _connect_tls(plan, context)
    except (SSL.Error, TimeoutError) as exc:
        raise _handshake_failure(plan, exc, diagnose=True) from None
    try:
        result = _session_facts(link, plan)
        status, http_error = _http_exchange(link, plan, path)
        session = link.conn.get_session()
    finally:
        _close(link)
    resumed, resume_error = _try_resume(plan, context, session) if resume else (None, None)
    return replace(result, resumed=resumed, resume_error=resume_error, http_status=status,
                   http_error=http_error)


def _request_path(path: str) -> str:
    if any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in path):
        raise ProbeError(f"HTTP path {path!r} contains spaces or control characters; "
                         "percent-encode them")
    return path if path.startswith("/") else "/" + path


def _sni_text(servername: str | None) -> str | None:
    """The server name as it goes on the wire (IDNA for non-ASCII names)."""
    if not servername:
        return None
    try:
        return servername.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ProbeError(f"server name {servername!r} is not a valid host name: {exc}") from None


# --- client context ---------------------------------------------------------------------------

def _client_context(plan: _Plan) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_max_proto_version(SSL.TLS1_3_VERSION)
    # Servers answering `Connection: close` often skip close_notify; for a probe that is just
    # the end of the response, not a truncation attack.
    context.set_options(SSL.OP_IGNORE_UNEXPECTED_EOF)
    context.set_alpn_protos([_ALPN])
    try:
        if plan.groups:
            openssl_ext.set_groups(context, plan.groups)
        if plan.sigalgs:
            openssl_ext.set_sigalgs(context, plan.sigalgs)
    except openssl_ext.OpenSSLCallError as exc:
        raise ProbeError(str(exc)) from None
    if plan.cafile:
        _load_ca(context, plan.cafile)
    if plan.cert or plan.key:
        _load_client_pair(context, plan.cert, plan.key)
    # VERIFY_NONE still verifies the chain in client mode and records the result for
    # SSL_get_verify_result; it only keeps a bad chain from aborting the handshake.
    context.set_verify(SSL.VERIFY_NONE)
    # Like `s_client -status`: ask for a stapled OCSP response; it is reported, not enforced.
    context.set_ocsp_client_callback(_note_staple)
    return context


def _note_staple(conn: SSL.Connection, data: bytes, _arg: object) -> bool:
    link = conn.get_app_data()
    if isinstance(link, _Link):
        link.stapled = data
    return True


def _load_ca(context: SSL.Context, cafile: str) -> None:
    try:
        context.load_verify_locations(cafile)
    except SSL.Error as exc:
        raise ProbeError(f"cannot load CA file {cafile}: {_reasons(exc)}") from None


def _load_client_pair(context: SSL.Context, cert: str | None, key: str | None) -> None:
    if cert is None:
        raise ProbeError("--key needs --cert: give the client certificate too")
    # A single PEM holding both the chain and the key is common; --cert alone then suffices.
    key = key or cert
    try:
        context.use_certificate_chain_file(cert)
        context.use_privatekey_file(key)
        context.check_privatekey()
    except SSL.Error as exc:
        raise ProbeError(f"cannot use client certificate {cert} with key {key}: "
                         f"{_reasons(exc)}") from None


# --- connections --------------------------------------------------------------------------

def _connect_tls(plan: _Plan, context: SSL.Context, session: SSL.Session | None = None) -> _Link:
    """TCP connect and TLS handshake, within plan.timeout.

    TCP problems become ProbeError here; handshake problems stay SSL.Error / TimeoutError so
    the caller decides how much to explain."""
    deadline = time.monotonic() + plan.timeout
    sock = _tcp_connect(plan, deadline)
    conn = SSL.Connection(context, sock)
    link = _Link(conn, sock, deadline)
    try:
        conn.set_app_data(link)
        conn.request_ocsp()
        _watch_certificate_request(link)
        conn.set_connect_state()
        if plan.sni:
            conn.set_tlsext_host_name(plan.sni.encode("ascii"))
        if plan.cafile:
            openssl_ext.set_verify_host(conn, plan.verify_name)
        if session is not None:
            conn.set_session(session)
        started = time.perf_counter()
        _until_done(conn.do_handshake, link)
        link.handshake_ms = (time.perf_counter() - started) * 1000
    except openssl_ext.OpenSSLCallError as exc:
        _close(link)
        raise ProbeError(str(exc)) from None
    except BaseException:
        _close(link)
        raise
    return link


def _watch_certificate_request(link: _Link) -> None:
    """Note whether the server asked for a client certificate.

    A TLS 1.3 server judges the client certificate after the client has finished; refusing
    it often ends in a TCP reset that overtakes the alert, and then this is the only clue."""

    def note(conn: SSL.Connection, where: int, ret: int) -> None:
        if b"certificate request" in conn.get_state_string():
            link.certificate_requested = True

    link.conn.set_info_callback(note)


def _tcp_connect(plan: _Plan, deadline: float) -> socket.socket:
    where = plan.target.authority
    try:
        return socket.create_connection((plan.target.host, plan.target.port),
                                        timeout=max(deadline - time.monotonic(), 0.001))
    except ConnectionRefusedError:
        raise ProbeError(f"connection to {where} refused: nothing is listening there "
                         "(check the host and port, and that the server is running)") from None
    except TimeoutError:
        raise ProbeError(f"timed out after {plan.timeout:g}s connecting to {where}: the host "
                         "is down or a firewall drops the packets") from None
    except socket.gaierror as exc:
        raise ProbeError(f"cannot resolve {plan.target.host}: {exc.strerror}") from None
    except OSError as exc:
        raise ProbeError(f"cannot connect to {where}: {exc.strerror or exc}") from None


def _until_done(operation: Callable[[], _T], link: _Link) -> _T:
    """Run a pyOpenSSL call to completion, waiting on the socket until the link's deadline.

    A Python socket with a timeout is non-blocking underneath, so OpenSSL answers WANT_READ /
    WANT_WRITE instead of waiting; the loop ends by success, error or TimeoutError."""
    while True:
        try:
            return operation()
        except SSL.WantReadError:
            _wait(link, selectors.EVENT_READ)
        except SSL.WantWriteError:
            _wait(link, selectors.EVENT_WRITE)


def _wait(link: _Link, event: int) -> None:
    remaining = link.deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    with selectors.DefaultSelector() as selector:
        selector.register(link.sock, event)
        if not selector.select(remaining):
            raise TimeoutError


def _close(link: _Link) -> None:
    # An orderly close_notify, as a well-behaved client sends, so servers do not log the probe
    # as a truncated connection; a peer that already left makes it fail, which is fine.
    try:
        link.conn.shutdown()
    except SSL.Error:
        pass
    link.sock.close()


# --- what was negotiated ------------------------------------------------------------------

def _session_facts(link: _Link, plan: _Plan) -> ProbeResult:
    """What the handshake settled; the HTTP and resumption fields are filled in later."""
    conn = link.conn
    protocol = conn.get_protocol_version_name()
    chain = _peer_chain(conn)
    peer_key = chain[0].key if chain else None
    verify_ok, verify_error = _verification(conn, checked=plan.cafile is not None)
    alpn = conn.get_alpn_proto_negotiated()
    return ProbeResult(
        host=plan.target.host,
        port=plan.target.port,
        servername=plan.sni,
        protocol=protocol,
        group=_canonical_group(openssl_ext.negotiated_group(conn)),
        cipher=conn.get_cipher_name(),
        peer_sigalg=_peer_sigalg(peer_key, protocol, plan.sigalgs) if peer_key else None,
        peer_key=peer_key,
        alpn=alpn.decode("ascii", "replace") if alpn else None,
        chain=chain,
        verify_ok=verify_ok,
        verify_error=verify_error,
        resumed=None,
        http_status=None,
        handshake_ms=link.handshake_ms,
        client_cert_requested=link.certificate_requested,
        client_cert_sent=link.certificate_requested and plan.cert is not None,
        ocsp=_staple_text(link.stapled, conn) if link.stapled else None,
    )


def _staple_text(der: bytes, conn: SSL.Connection) -> str:
    """'good (...)', 'revoked (...)' or why the staple does not verify, checked against the
    chain the server sent (its issuer must be in it)."""
    chain = conn.get_peer_cert_chain(as_cryptography=True) or []
    issuer = tls_ocsp.find_issuer(chain[0], list(chain[1:])) if chain else None
    if issuer is None:
        return "present, not checked (the issuer is not in the chain sent)"
    try:
        checked = tls_ocsp.verify_response(der, chain[0], issuer,
                                           dt.datetime.now(dt.timezone.utc))
    except tls_ocsp.OcspInvalid as exc:
        return f"INVALID: {exc}"
    text = (f"{checked.status.value} (next update {checked.next_update:%Y-%m-%d %H:%M:%S} UTC, "
            f"signed by the {checked.signer})")
    return text


def _canonical_group(name: str | None) -> str | None:
    # OpenSSL reports classical curves by their lowercase internal name ('x25519'), hybrids by
    # their IANA spelling; policy's names are the ones the rest of qproxy compares against.
    return policy.GROUP_NAMES.get(name.lower(), name) if name else None


def _peer_chain(conn: SSL.Connection) -> tuple[ChainEntry, ...]:
    # On the client side OpenSSL's peer chain includes the leaf, first.
    certs = conn.get_peer_cert_chain(as_cryptography=True) or []
    return tuple(ChainEntry(certinfo.subject_string(c), certinfo.certificate_key(c)) for c in certs)


def _peer_sigalg(key_kind: str, protocol: str, offered: str | None) -> str:
    if offered and protocol == "TLSv1.3" and key_kind.startswith("RSA"):
        # OpenSSL servers follow the client's order, so an RSA key signs with the first
        # RSA-PSS scheme we offered rather than the usual SHA-256 one.
        for name in offered.split(":"):
            if name.lower().startswith("rsa_pss_rsae_"):
                return name.lower()
    return policy.sigalg_for_key(key_kind, protocol)


def _verification(conn: SSL.Connection, *, checked: bool) -> tuple[bool | None, str | None]:
    if not checked:
        return None, None
    code = openssl_ext.verify_result(conn)
    if code == 0:
        return True, None
    return False, openssl_ext.verify_result_string(code)


# --- HTTP ---------------------------------------------------------------------------------

def _http_exchange(link: _Link, plan: _Plan, path: str) -> tuple[int | None, str | None]:
    """(status, None), or (None, why) when the server gave no usable answer.

    A TLS alert here is still a handshake failure (a TLS 1.3 server checks the client
    certificate after the client has finished) and is raised as ProbeError."""
    request = (f"GET {path} HTTP/1.1\r\nHost: {_host_header(plan)}\r\nUser-Agent: qproxy-probe\r\n"
               "Accept: */*\r\nConnection: close\r\n\r\n").encode("utf-8")
    try:
        _send_all(link, request)
        response = _read_response(link)
    except TimeoutError:
        return None, f"no complete response within {plan.timeout:g}s"
    except SSL.SysCallError as exc:
        if link.certificate_requested:
            raise _client_certificate_refused(plan, exc) from None
        return None, f"connection closed before any response ({_syscall_text(exc)})"
    except SSL.Error as exc:
        raise _handshake_failure(plan, exc, diagnose=False) from None
    match = _STATUS_LINE.match(response)
    if match is None:
        return None, "no HTTP response" if not response else "not an HTTP/1.x response"
    return int(match.group(1)), None


def _host_header(plan: _Plan) -> str:
    if plan.sni is None:
        return plan.target.authority
    return plan.sni if plan.target.port == 443 else f"{plan.sni}:{plan.target.port}"


def _send_all(link: _Link, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = _until_done(lambda: link.conn.send(view), link)
        view = view[sent:]


def _read_response(link: _Link) -> bytes:
    data = bytearray()
    while len(data) < _MAX_RESPONSE and not _response_complete(data):
        try:
            chunk = _until_done(lambda: link.conn.recv(65536), link)
        except SSL.ZeroReturnError:
            break
        except SSL.SysCallError:
            # A reset after part of the response still leaves a status line to report.
            if data:
                break
            raise
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _response_complete(data: bytes | bytearray) -> bool:
    """Headers and a Content-Length body are in: stop even if the server keeps the line open."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    length = _CONTENT_LENGTH.search(data, 0, end + 2)
    return length is not None and len(data) - (end + 4) >= int(length.group(1))


# --- resumption ---------------------------------------------------------------------------

def _try_resume(plan: _Plan, context: SSL.Context,
                session: SSL.Session | None) -> tuple[bool | None, str | None]:
    if session is None:
        return False, None
    try:
        link = _connect_tls(plan, context, session)
    except ProbeError as exc:
        return None, f"second connection failed: {exc}"
    except (SSL.Error, TimeoutError) as exc:
        return None, f"second connection failed: {_handshake_failure(plan, exc, diagnose=False)}"
    try:
        return openssl_ext.session_reused(link.conn), None
    finally:
        _close(link)


# --- explaining failures ------------------------------------------------------------------

def _reasons(exc: SSL.Error) -> str:
    """OpenSSL's reason strings from a pyOpenSSL error ([(library, function, reason), ...])."""
    entries = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    reasons = [e[2] for e in entries if isinstance(e, tuple) and len(e) == 3 and e[2]]
    return "; ".join(dict.fromkeys(reasons)) or str(exc) or type(exc).__name__


def _syscall_text(exc: SSL.SysCallError) -> str:
    if len(exc.args) == 2:
        return str(exc.args[1])
    return str(exc) or "unexpected end of file"


def _handshake_failure(plan: _Plan, exc: BaseException, *, diagnose: bool) -> ProbeError:
    where = plan.target.authority
    if isinstance(exc, TimeoutError):
        return ProbeError(f"timed out after {plan.timeout:g}s in the TLS handshake with {where}: "
                          "the server accepted the connection but did not answer (is this a "
                          "TLS port?)")
    if isinstance(exc, SSL.SysCallError):
        return ProbeError(f"handshake with {where} failed: the server closed the connection "
                          f"({_syscall_text(exc)}); it may not speak TLS on this port, or it "
                          "dropped the ClientHello without an alert")
    reason = _reasons(exc) if isinstance(exc, SSL.Error) else str(exc)
    hint = _hint(plan, reason, diagnose)
    return ProbeError(f"handshake with {where} failed: {reason}" + (f" — {hint}" if hint else ""))


def _client_certificate_refused(plan: _Plan, exc: SSL.SysCallError) -> ProbeError:
    if plan.cert is None:
        hint = "it requires one: pass --cert and --key"
    else:
        hint = f"it probably rejected {plan.cert} (is it issued by a CA the server trusts?)"
    return ProbeError(f"handshake with {plan.target.authority} failed: the server asked for a "
                      f"client certificate, then closed the connection ({_syscall_text(exc)}) "
                      f"— {hint}")


def _hint(plan: _Plan, reason: str, diagnose: bool) -> str | None:
    lowered = reason.lower()
    if "handshake failure" in lowered:
        return _diagnose_handshake_failure(plan) if diagnose else None
    return next((hint for needle, hint in _REASON_HINTS if needle in lowered), None)


def _diagnose_handshake_failure(plan: _Plan) -> str:
    """Tell which restriction the server refused by retrying without it.

    The handshake_failure alert is all a client sees whether the server lacked the group, a
    certificate for the signature algorithms, or a cipher suite; at most two extra handshakes
    (no HTTP) settle which, and only for restrictions the caller asked for."""
    if plan.groups:
        relaxed = _negotiated_with(replace(plan, groups=None))
        if relaxed is not None:
            return (f"the server refused every group offered (--groups {plan.groups}); with "
                    f"OpenSSL's default groups it chose {relaxed.group}")
    if plan.sigalgs:
        relaxed = _negotiated_with(replace(plan, sigalgs=None))
        if relaxed is not None:
            return (f"the server has no certificate that can sign with the algorithms offered "
                    f"(--sigalgs {plan.sigalgs}); with the defaults it signed with "
                    f"{relaxed.peer_sigalg} ({relaxed.peer_key} key)")
    offered = [f"--groups {plan.groups}" if plan.groups else "default groups",
               f"--sigalgs {plan.sigalgs}" if plan.sigalgs else "default signature algorithms"]
    return ("the server shares no group, signature algorithm or cipher suite with this client "
            f"({', '.join(offered)})")


def _negotiated_with(plan: _Plan) -> ProbeResult | None:
    relaxed = replace(plan, cafile=None)
    try:
        link = _connect_tls(relaxed, _client_context(relaxed))
    except (ProbeError, SSL.Error, TimeoutError):
        return None
    try:
        return _session_facts(link, relaxed)
    finally:
        _close(link)


# --- summary ------------------------------------------------------------------------------

def _group_label(group: str | None) -> str:
    if group is None:
        return "unknown"
    if group in policy.HYBRID_GROUPS.values():
        return f"{group} (post-quantum hybrid)"
    if policy.is_post_quantum(group):
        return f"{group} (post-quantum)"
    return f"{group} (classical, not post-quantum)"


def _sigalg_label(sigalg: str | None) -> str:
    if sigalg is None:
        return "unknown"
    kind = "post-quantum" if sigalg.startswith(("mldsa", "slhdsa")) else "classical"
    return f"{sigalg} ({kind})"


def _verification_label(result: ProbeResult) -> str:
    if result.verify_ok is None:
        return "not checked (no CA file given)"
    return "OK" if result.verify_ok else f"FAILED: {result.verify_error}"


def _client_cert_label(result: ProbeResult) -> str:
    if not result.client_cert_requested:
        return "not requested"
    return "requested, sent" if result.client_cert_sent else "requested, none sent"


def _resumed_label(result: ProbeResult) -> str:
    if result.resume_error:
        return f"unknown ({result.resume_error})"
    if result.resumed is None:
        return "not tried"
    return "yes" if result.resumed else "no"


def _http_label(result: ProbeResult) -> str:
    if result.http_status is not None:
        return str(result.http_status)
    return f"no status ({result.http_error})" if result.http_error else "no status"


def format_result(result: ProbeResult) -> str:
    """The multi-line human summary the CLI prints."""
    host = f"[{result.host}]" if ":" in result.host else result.host
    lines = [
        f"Connected to {host}:{result.port} (SNI: {result.servername or 'none'})",
        f"Protocol: {result.protocol}",
        f"Group: {_group_label(result.group)}",
        f"Cipher: {result.cipher or 'unknown'}",
        f"Peer signature: {_sigalg_label(result.peer_sigalg)}",
        f"ALPN: {result.alpn or 'none'}",
        "Certificate chain:",
        *(f"  {depth}: {entry.subject} [{entry.key}]" for depth, entry in enumerate(result.chain)),
        f"Verification: {_verification_label(result)}",
        f"Client certificate: {_client_cert_label(result)}",
        f"OCSP: {'stapled, ' + result.ocsp if result.ocsp else 'not stapled'}",
        f"Resumed: {_resumed_label(result)}",
        f"HTTP: {_http_label(result)}",
        f"Handshake: {result.handshake_ms:.1f} ms",
    ]
    if not result.chain:
        lines.insert(lines.index("Certificate chain:") + 1, "  (none sent)")
    return "\n".join(lines)
