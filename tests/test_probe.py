"""qproxy.probe against a real pyOpenSSL server in a thread, and the certinfo helpers."""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, mldsa, rsa
from OpenSSL import SSL

from qproxy import pki
from qproxy.errors import QProxyError
from qproxy.probe import ProbeError, ProbeResult, Target, format_result, parse_target, probe
from qproxy.tls import certinfo, openssl_ext

SERVER_GROUPS = "X25519MLKEM768:SecP384r1MLKEM1024/X25519:secp384r1"
BODY = b"probed\n"


# --- a small blocking TLS server -------------------------------------------------------------

class TlsServer:
    """Accepts at most `max_connections` within `lifetime` seconds, one at a time.

    Each connection: handshake, read one HTTP request, answer 200 with Content-Length, close.
    Records what it presented and what went wrong, so tests can check the probe's story."""

    def __init__(self, context: SSL.Context, host: str = "127.0.0.1", *,
                 reset_after_handshake: bool = False, max_connections: int = 12,
                 lifetime: float = 30.0) -> None:
        self.context = context
        self.reset_after_handshake = reset_after_handshake
        self.presented: list[bytes | None] = []
        self.requests: list[bytes] = []
        self.errors: list[str] = []
        self._max_connections = max_connections
        self._deadline = time.monotonic() + lifetime
        self._stopping = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        # Listening before the thread starts: clients can connect at once, no readiness wait.
        self._listener.listen(8)
        self.port: int = self._listener.getsockname()[1]
        self.url_host = f"[{host}]" if ":" in host else host
        self._thread = threading.Thread(target=self._run, name="probe-test-server", daemon=True)
        self._thread.start()

    def url(self, path: str = "/") -> str:
        return f"https://{self.url_host}:{self.port}{path}"

    def _run(self) -> None:
        try:
            for _ in range(self._max_connections):
                remaining = self._deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    return
                self._listener.settimeout(remaining)
                try:
                    sock, _ = self._listener.accept()
                except OSError:
                    return
                if self._stopping.is_set():
                    sock.close()
                    return
                self._serve(sock)
        finally:
            self._listener.close()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(None)  # blocking: pyOpenSSL then never raises WantRead here
        conn = SSL.Connection(self.context, sock)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            self.presented.append(openssl_ext.own_certificate_der(conn))
            if self.reset_after_handshake:
                # Linger 0: close() sends a TCP reset, as a server dropping a client does.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            request = _read_request(conn)
            self.requests.append(request)
            if request:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                             + str(len(BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + BODY)
                conn.shutdown()
        except SSL.Error as exc:
            self.errors.append(_reasons(exc))
        finally:
            sock.close()

    def stop(self) -> None:
        """End the accept loop and wait for it; afterwards the records are complete."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        try:  # wake a pending accept(); it sees the flag and returns
            socket.create_connection(("::1" if ":" in self.url_host else "127.0.0.1", self.port),
                                     timeout=2).close()
        except OSError:
            pass  # already gone: the loop ended on its own
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "test server thread did not stop"


def _read_request(conn: SSL.Connection) -> bytes:
    data = b""
    for _ in range(64):  # a GET fits in one or two records
        try:
            chunk = conn.recv(16384)
        except (SSL.ZeroReturnError, SSL.SysCallError):
            break  # a handshake-only client (resumption check, diagnosis) closes here
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            break
    return data


def _reasons(exc: SSL.Error) -> str:
    entries = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    return "; ".join(e[2] for e in entries if len(e) == 3) or repr(exc)


def _select_http11(conn: SSL.Connection, offered: list[bytes]) -> bytes:
    return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def server_context(dev: pki.DevPki, *, require_client_cert: bool = False,
                   ask_client_cert: bool = False, max_version: int | None = None) -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    for cert, key in ((dev.mldsa_cert, dev.mldsa_key), (dev.ecdsa_cert, dev.ecdsa_key)):
        context.use_certificate_chain_file(str(cert))
        context.use_privatekey_file(str(key))
    openssl_ext.set_groups(context, SERVER_GROUPS)
    context.set_alpn_select_callback(_select_http11)
    # Without a session id context OpenSSL refuses to resume sessions of verified clients.
    context.set_session_id(b"qproxy-probe-test")
    if require_client_cert:
        context.load_verify_locations(str(dev.ca_bundle))
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    elif ask_client_cert:
        context.load_verify_locations(str(dev.ca_bundle))
        context.set_verify(SSL.VERIFY_PEER)  # asks, but a client without one is let in
    return context


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> pki.DevPki:
    return pki.init(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_dev(tmp_path_factory: pytest.TempPathFactory) -> pki.DevPki:
    """A second, unrelated PKI: its CA bundle trusts nothing the server presents."""
    return pki.init(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture
def serve() -> Iterator[Callable[..., TlsServer]]:
    servers: list[TlsServer] = []

    def start(context: SSL.Context, host: str = "127.0.0.1", **options: bool) -> TlsServer:
        server = TlsServer(context, host, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(dev: pki.DevPki, serve: Callable[..., TlsServer]) -> TlsServer:
    return serve(server_context(dev))


def leaf_der(chain_file: Path) -> bytes:
    return x509.load_pem_x509_certificates(chain_file.read_bytes())[0].public_bytes(
        serialization.Encoding.DER)


# --- probing -------------------------------------------------------------------------------

def test_default_probe_gets_hybrid_group_mldsa_and_resumes(dev: pki.DevPki,
                                                           server: TlsServer) -> None:
    result = probe(server.url("/health"), cafile=str(dev.ca_bundle), timeout=10)

    assert result.protocol == "TLSv1.3"
    assert result.group == "X25519MLKEM768"
    assert result.peer_sigalg == "mldsa65"
    assert result.peer_key == "ML-DSA-65"
    assert result.cipher is not None and result.cipher.startswith("TLS_")
    assert result.alpn == "http/1.1"
    assert result.verify_ok is True and result.verify_error is None
    assert [entry.key for entry in result.chain] == ["ML-DSA-65", "ML-DSA-65"]
    assert result.chain[0].subject == "O=qproxy development, CN=localhost"
    assert "ML-DSA-65 Intermediate CA" in result.chain[1].subject
    assert result.resumed is True and result.resume_error is None
    assert result.http_status == 200 and result.http_error is None
    assert result.servername is None  # an IP address target sends no SNI
    assert result.handshake_ms > 0
    # The derived signature algorithm matches the certificate the server really used.
    assert server.presented[0] == leaf_der(dev.mldsa_cert)
    assert server.requests[0].startswith(b"GET /health HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{server.port}\r\n".encode() in server.requests[0]
    assert b"\r\nConnection: close\r\n" in server.requests[0]


def test_format_result_summary(dev: pki.DevPki, server: TlsServer) -> None:
    text = format_result(probe(server.url(), cafile=str(dev.ca_bundle)))
    lines = text.splitlines()

    assert "Protocol: TLSv1.3" in lines
    assert "Group: X25519MLKEM768 (post-quantum hybrid)" in lines
    assert "Peer signature: mldsa65 (post-quantum)" in lines
    assert "Verification: OK" in lines
    assert "Resumed: yes" in lines
    assert "HTTP: 200" in lines
    chain_at = lines.index("Certificate chain:")
    assert lines[chain_at + 1] == "  0: O=qproxy development, CN=localhost [ML-DSA-65]"
    assert lines[chain_at + 2].startswith("  1: ") and lines[chain_at + 2].endswith("[ML-DSA-65]")


def test_groups_option_picks_secp384r1_mlkem1024(dev: pki.DevPki, server: TlsServer) -> None:
    result = probe(server.url(), groups="SecP384r1MLKEM1024", cafile=str(dev.ca_bundle))

    assert result.group == "SecP384r1MLKEM1024"
    assert result.verify_ok is True
    assert result.http_status == 200


def test_sigalgs_option_gets_the_ecdsa_certificate(dev: pki.DevPki, server: TlsServer) -> None:
    result = probe(server.url(), sigalgs="ecdsa_secp384r1_sha384", cafile=str(dev.ca_bundle))

    assert result.peer_key == "ECDSA P-384"
    assert result.peer_sigalg == "ecdsa_secp384r1_sha384"
    assert [entry.key for entry in result.chain] == ["ECDSA P-384", "ECDSA P-384"]
    assert result.verify_ok is True
    assert server.presented[0] == leaf_der(dev.ecdsa_cert)
    assert "Peer signature: ecdsa_secp384r1_sha384 (classical)" in format_result(result)


def test_wrong_ca_is_reported_not_raised(other_dev: pki.DevPki, server: TlsServer) -> None:
    result = probe(server.url(), cafile=str(other_dev.ca_bundle))

    assert result.verify_ok is False
    assert result.verify_error is not None and "issuer" in result.verify_error
    assert result.http_status == 200  # like s_client, the probe carries on
    assert f"Verification: FAILED: {result.verify_error}" in format_result(result).splitlines()


def test_name_mismatch_fails_verification(dev: pki.DevPki, server: TlsServer) -> None:
    result = probe(server.url(), servername="elsewhere.example", cafile=str(dev.ca_bundle))

    assert result.servername == "elsewhere.example"
    assert result.verify_ok is False
    assert result.verify_error is not None and "mismatch" in result.verify_error
    assert b"\r\nHost: elsewhere.example:" in server.requests[0]


def test_without_cafile_verification_is_not_checked(server: TlsServer) -> None:
    result = probe(server.url(), resume=False)

    assert result.verify_ok is None and result.verify_error is None
    assert result.resumed is None
    lines = format_result(result).splitlines()
    assert "Verification: not checked (no CA file given)" in lines
    assert "Resumed: not tried" in lines
    assert len(server.presented) == 1  # no second connection


def test_group_the_server_lacks_raises_with_reason(server: TlsServer) -> None:
    with pytest.raises(ProbeError) as caught:
        probe(server.url(), groups="SecP256r1MLKEM768", timeout=5)

    message = str(caught.value)
    assert "handshake failure" in message  # OpenSSL's reason, as the client saw it
    assert "refused every group offered (--groups SecP256r1MLKEM768)" in message
    assert "it chose X25519MLKEM768" in message  # the diagnostic retry with default groups
    server.stop()  # the server notes its side after sending the alert: wait for it
    assert "no suitable key share" in server.errors[0]


def test_sigalg_the_server_cannot_sign_with_raises_with_reason(server: TlsServer) -> None:
    with pytest.raises(ProbeError, match=r"--sigalgs ed25519.*signed with mldsa65"):
        probe(server.url(), sigalgs="ed25519", timeout=5)


def test_http_path_overrides_the_url_path(server: TlsServer) -> None:
    result = probe(server.url("/ignored"), http_path="status?full=1", resume=False)

    assert result.http_status == 200
    assert server.requests[0].startswith(b"GET /status?full=1 HTTP/1.1\r\n")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"http_path": "/a b"}, "spaces or control characters"),
        ({"http_path": "/a\r\nX-Injected: 1"}, "spaces or control characters"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"servername": "a..b"}, "not a valid host name"),
    ],
)
def test_bad_options_are_rejected_before_connecting(options: dict[str, object],
                                                    message: str) -> None:
    with pytest.raises(ProbeError, match=message):
        probe("https://127.0.0.1:9/", **options)  # type: ignore[arg-type]


def test_unknown_group_name_is_rejected_before_connecting() -> None:
    with pytest.raises(ProbeError, match="rejected groups 'NoSuchGroup'"):
        probe("https://127.0.0.1:9/", groups="NoSuchGroup")


def test_connection_refused() -> None:
    # Bound but not listening: the kernel refuses connections, and no other test can take the port.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        with pytest.raises(ProbeError, match="refused: nothing is listening") as caught:
            probe(f"https://127.0.0.1:{port}/", timeout=5)
    assert isinstance(caught.value, QProxyError)


def test_silent_server_times_out() -> None:
    # The kernel completes the TCP handshake from the backlog; nobody ever answers the ClientHello.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        started = time.monotonic()
        with pytest.raises(ProbeError, match="timed out after 0.5s in the TLS handshake"):
            probe(f"https://127.0.0.1:{silent.getsockname()[1]}/", timeout=0.5)
        assert time.monotonic() - started < 5


def test_plain_http_port_is_recognised() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(10)  # bounds the helper thread if the probe never connects

        def answer_in_plain_http() -> None:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            with sock:
                sock.settimeout(10)
                sock.recv(4096)
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")

        helper = threading.Thread(target=answer_in_plain_http, daemon=True)
        helper.start()
        with pytest.raises(ProbeError, match="did not answer with TLS: is this a plain-HTTP port"):
            probe(f"https://127.0.0.1:{listener.getsockname()[1]}/", timeout=5)
        helper.join(timeout=10)
        assert not helper.is_alive()


def test_client_certificate_for_mutual_tls(dev: pki.DevPki,
                                           serve: Callable[..., TlsServer]) -> None:
    server = serve(server_context(dev, require_client_cert=True))

    result = probe(server.url(), cafile=str(dev.ca_bundle), cert=str(dev.client_cert),
                   key=str(dev.client_key))

    assert result.http_status == 200
    assert result.verify_ok is True
    assert result.resumed is True
    assert result.client_cert_requested and result.client_cert_sent
    assert "Client certificate: requested, sent" in format_result(result).splitlines()


def test_missing_client_certificate_is_explained(dev: pki.DevPki,
                                                 serve: Callable[..., TlsServer]) -> None:
    server = serve(server_context(dev, require_client_cert=True))

    # Whether the alert or the TCP reset reaches the probe first is a race; both must say it.
    with pytest.raises(ProbeError, match=r"client certificate.*pass --cert and --key"):
        probe(server.url(), cafile=str(dev.ca_bundle), timeout=5)
    server.stop()
    assert "peer did not return a certificate" in server.errors[0]


def test_untrusted_client_certificate_is_explained(dev: pki.DevPki, other_dev: pki.DevPki,
                                                   serve: Callable[..., TlsServer]) -> None:
    server = serve(server_context(dev, require_client_cert=True))

    with pytest.raises(ProbeError, match=r"client certificate|client-cert\.pem"):
        probe(server.url(), cert=str(other_dev.client_cert), key=str(other_dev.client_key),
              timeout=5)
    server.stop()
    assert server.errors and "certificate" in server.errors[0]


def test_reset_after_certificate_request_blames_the_missing_certificate(
        dev: pki.DevPki, serve: Callable[..., TlsServer]) -> None:
    server = serve(server_context(dev, ask_client_cert=True), reset_after_handshake=True)

    with pytest.raises(ProbeError, match=r"asked for a client certificate, then closed the "
                                         r"connection \(.*\) — it requires one"):
        probe(server.url(), timeout=5)


def test_reset_without_certificate_request_is_an_http_error(
        dev: pki.DevPki, serve: Callable[..., TlsServer]) -> None:
    server = serve(server_context(dev), reset_after_handshake=True)

    result = probe(server.url(), resume=False, timeout=5)

    assert result.group == "X25519MLKEM768"  # the handshake facts survive
    assert result.http_status is None
    assert result.http_error is not None
    assert result.http_error.startswith("connection closed before any response")
    assert not result.client_cert_requested


def test_key_without_cert_is_rejected(dev: pki.DevPki) -> None:
    with pytest.raises(ProbeError, match="--key needs --cert"):
        probe("https://127.0.0.1:9/", key=str(dev.client_key))


def test_tls12_server_is_classical(dev: pki.DevPki, serve: Callable[..., TlsServer]) -> None:
    server = serve(server_context(dev, max_version=SSL.TLS1_2_VERSION))

    result = probe(server.url(), cafile=str(dev.ca_bundle))

    assert result.protocol == "TLSv1.2"
    assert result.group == "X25519"  # ML-KEM groups exist only in TLS 1.3
    assert result.peer_key == "ECDSA P-384"  # ML-DSA cannot sign TLS 1.2 handshakes
    assert result.verify_ok is True
    assert result.resumed is True
    assert "Group: X25519 (classical, not post-quantum)" in format_result(result).splitlines()


@pytest.mark.ci_may_skip(reason="a CI container may have no IPv6 loopback")
def test_ipv6_literal_url(dev: pki.DevPki, serve: Callable[..., TlsServer]) -> None:
    try:
        server = serve(server_context(dev), host="::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")

    result = probe(server.url("/v6"), cafile=str(dev.ca_bundle))

    assert result.host == "::1"
    assert result.verify_ok is True  # the dev certificates name ::1 as an IP address
    assert result.http_status == 200
    assert f"\r\nHost: [::1]:{server.port}\r\n".encode() in server.requests[0]
    assert format_result(result).startswith(f"Connected to [::1]:{server.port} (SNI: none)")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com", Target("example.com", 443, "/")),
        ("https://Example.COM:8443/a/b?c=d", Target("example.com", 8443, "/a/b?c=d")),
        ("https://[::1]:4433/x", Target("::1", 4433, "/x")),
        ("https://[2001:db8::1]/", Target("2001:db8::1", 443, "/")),
        ("localhost:4433", Target("localhost", 4433, "/")),
    ],
)
def test_parse_target(url: str, expected: Target) -> None:
    assert parse_target(url) == expected


@pytest.mark.parametrize("url", ["http://example.com/", "https://example.com:99999/", "https://"])
def test_parse_target_rejects(url: str) -> None:
    with pytest.raises(ProbeError):
        parse_target(url)


def test_target_authority_brackets_ipv6_and_omits_443() -> None:
    assert Target("::1", 8443, "/").authority == "[::1]:8443"
    assert Target("example.com", 443, "/").authority == "example.com"


def test_format_result_without_http_or_chain() -> None:
    result = ProbeResult(host="example.com", port=443, servername="example.com",
                         protocol="TLSv1.3", group="MLKEM1024", cipher=None, peer_sigalg=None,
                         peer_key=None, alpn=None, chain=(), verify_ok=None, verify_error=None,
                         resumed=None, http_status=None, handshake_ms=1.0,
                         http_error="no HTTP response", resume_error="second connection failed: x")
    lines = format_result(result).splitlines()

    assert "Group: MLKEM1024 (post-quantum)" in lines
    assert lines[lines.index("Certificate chain:") + 1] == "  (none sent)"
    assert "HTTP: no status (no HTTP response)" in lines
    assert "Resumed: unknown (second connection failed: x)" in lines


# --- certinfo --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("make_key", "expected"),
    [
        (lambda: mldsa.MLDSA44PrivateKey.generate(), "ML-DSA-44"),
        (lambda: mldsa.MLDSA65PrivateKey.generate(), "ML-DSA-65"),
        (lambda: mldsa.MLDSA87PrivateKey.generate(), "ML-DSA-87"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ECDSA P-256"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ECDSA P-384"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "ECDSA P-521"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "ECDSA secp256k1"),
        (lambda: rsa.generate_private_key(65537, 2048), "RSA-2048"),
        (lambda: ed25519.Ed25519PrivateKey.generate(), "Ed25519"),
        (lambda: ed448.Ed448PrivateKey.generate(), "Ed448"),
    ],
)
def test_describe_key(make_key: Callable[[], object], expected: str) -> None:
    assert certinfo.describe_key(make_key().public_key()) == expected  # type: ignore[attr-defined]


def test_describe_key_of_dev_certificates(dev: pki.DevPki) -> None:
    kinds = {
        path.name: certinfo.certificate_key(x509.load_pem_x509_certificates(path.read_bytes())[0])
        for path in (dev.mldsa_cert, dev.ecdsa_cert, dev.rsa_cert, dev.client_cert)
    }
    assert kinds == {
        dev.mldsa_cert.name: "ML-DSA-65",
        dev.ecdsa_cert.name: "ECDSA P-384",
        dev.rsa_cert.name: "RSA-3072",
        dev.client_cert.name: "ECDSA P-256",
    }


def test_subject_san_and_fingerprint(dev: pki.DevPki) -> None:
    leaf, intermediate = x509.load_pem_x509_certificates(dev.mldsa_cert.read_bytes())

    assert certinfo.subject_string(leaf) == "O=qproxy development, CN=localhost"
    assert certinfo.san_list(leaf) == ["localhost", "127.0.0.1", "::1"]
    assert certinfo.san_list(intermediate) == []  # CAs carry no subjectAltName here
    fingerprint = certinfo.sha256_fingerprint(leaf)
    assert fingerprint == hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert fingerprint != certinfo.sha256_fingerprint(intermediate)


def test_subject_string_escapes_special_characters(dev: pki.DevPki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.issue("a, b + c", key.public_key(), pki._name("issuer"), key, ca=True)
    assert certinfo.subject_string(cert) == r"O=qproxy development, CN=a\, b \+ c"
