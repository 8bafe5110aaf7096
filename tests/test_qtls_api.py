"""qproxy.qtls in one process: the documented examples, mTLS, resumption, bad input, threads.

Real TLS over real sockets on 127.0.0.1; servers run in threads of the test process."""

from __future__ import annotations

import datetime as dt
import socket
import threading

import pytest

from qproxy.qtls import (
    QTLS_CLIENT_MODE, QTLS_OP_CLASSICAL_ONLY, QTLS_OP_HYBRID_MODE, QTLS_OP_PQC_ONLY,
    QTLS_OP_REQUIRE_PQ, QTLS_SERVER_MODE, QTLS_VERIFY_FAIL_IF_NO_PEER_CERT, QTLS_VERIFY_NONE,
    QTLS_VERIFY_PEER, ConnectionState, ErrorCode, QTLSClient, QTLSConfigError,
    QTLSConnection, QTLSConnectionClosed, QTLSContext, QTLSException, QTLSHandshakeError,
    QTLSHSMError, QTLSModeError, QTLSServer, QTLSStateError, QTLSTimeout, QTLSUsageError,
    QTLSVerificationError,
)
from tests.qtls_support import ThreadedServer, doc_example, echo, write_ca_and_leaf


def server_context(dev_pki, *, cert=None, key=None, options=QTLS_OP_HYBRID_MODE,
                   verify=QTLS_VERIFY_NONE) -> QTLSContext:
    ctx = QTLSContext(mode=QTLS_SERVER_MODE)
    ctx.use_certificate_file(cert or dev_pki.mldsa_cert)
    ctx.use_private_key_file(key or dev_pki.mldsa_key)
    ctx.set_options(options)
    if verify:
        ctx.load_verify_locations(dev_pki.ca_bundle)
        ctx.set_verify_mode(verify)
    return ctx


def client_context(ca, options=QTLS_OP_HYBRID_MODE) -> QTLSContext:
    ctx = QTLSContext(mode=QTLS_CLIENT_MODE)
    ctx.load_verify_locations(ca)
    ctx.set_options(options)
    return ctx


@pytest.fixture
def echo_server(dev_pki):
    started = []

    def start(ctx: QTLSContext | None = None, handler=echo) -> ThreadedServer:
        server = ThreadedServer(QTLSServer(ctx or server_context(dev_pki), "127.0.0.1", 0),
                                handler)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


# -- the examples of docs/qtls.md (the seed's), as written but for paths ----------------------


def test_seed_server_and_client_examples_run_as_written(dev_pki, capsys):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    server_code = doc_example("Server", {
        "/etc/qtls/server-cert.pem": str(dev_pki.mldsa_cert),
        "/etc/qtls/server-key.pem": str(dev_pki.mldsa_key),
        "'0.0.0.0', 8443": f"'127.0.0.1', {free}"})
    namespace: dict = {}
    ready = threading.Event()
    original_init = QTLSServer.__init__

    def run_server() -> None:
        exec(compile(server_code, "docs/qtls.md#server", "exec"), namespace)

    thread = threading.Thread(target=run_server, daemon=True)
    thread.start()
    for _ in range(200):  # the example binds before its loop; wait for that, bounded
        if "server" in namespace:
            ready.set()
            break
        threading.Event().wait(0.05)
    assert ready.is_set()
    client_code = doc_example("Client", {
        "/etc/qtls/ca-bundle.pem": str(dev_pki.ca_bundle),
        "'server.example.com', 8443": f"'localhost', {free}"})
    client_ns: dict = {}
    exec(compile(client_code, "docs/qtls.md#client", "exec"), client_ns)
    manager_code = doc_example("Context manager", {
        "/etc/qtls/ca-bundle.pem": str(dev_pki.ca_bundle),
        "('server.example.com', 8443)": f"('127.0.0.1', {free})"})
    exec(compile(manager_code, "docs/qtls.md#context-manager", "exec"), {})
    namespace["server"].close()
    thread.join(10)
    assert not thread.is_alive()
    out = capsys.readouterr().out
    assert "server certificate verified!" in out
    assert "received: Hello, Q-TLS server!" in out and "received: Hello!" in out
    assert "server says: Hello from the Q-TLS server!" in out
    assert "b'Hello from the Q-TLS server!'" in out  # the context-manager example's print
    assert client_ns["client"].connection.state is ConnectionState.CLOSED
    assert QTLSServer.__init__ is original_init


def test_seed_module_name_qtls_is_an_alias(dev_pki, echo_server, capsys):
    """The document imports `from qtls import ...`: its client example runs verbatim."""
    import qtls
    import qproxy.qtls

    assert qtls.QTLSContext is qproxy.qtls.QTLSContext and set(qtls.__all__) <= set(dir(qtls))
    server = echo_server()
    code = doc_example("Client", {
        "/etc/qtls/ca-bundle.pem": str(dev_pki.ca_bundle),
        "'server.example.com', 8443": f"'localhost', {server.port}",
        "from qproxy.qtls import": "from qtls import"})
    assert "from qtls import (" in code
    exec(compile(code, "seed client example", "exec"), {})
    assert "server says: echo:Hello, Q-TLS server!" in capsys.readouterr().out


def test_nonblocking_socket_is_made_blocking(dev_pki, echo_server):
    def slow_echo(conn: QTLSConnection) -> None:
        data = conn.read()
        threading.Event().wait(0.3)  # a reply that takes a moment: no 1 ms timeout may fire
        conn.write(b"echo:" + data)

    server = echo_server(handler=slow_echo)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setblocking(False)
    with QTLSConnection(client_context(dev_pki.ca_bundle), sock,
                        server_hostname="localhost") as conn:
        conn.connect()
        conn.write(b"nb")
        assert conn.read() == b"echo:nb"


def test_seed_kem_and_signature_examples_run_as_written(capsys):
    exec(compile(doc_example("ML-KEM (KYBER1024) key encapsulation"), "kem", "exec"), {})
    exec(compile(doc_example("ML-DSA (DILITHIUM3) signatures"), "sig", "exec"), {})
    assert "signature valid: True" in capsys.readouterr().out


# -- what a connection reports -------------------------------------------------------------


def test_hybrid_client_and_server_negotiate_x25519mlkem768_and_mldsa65(dev_pki, echo_server):
    server = echo_server()
    client = QTLSClient(client_context(dev_pki.ca_bundle))
    conn = client.connect("localhost", server.port)
    assert conn.negotiated_group == "X25519MLKEM768" and conn.is_post_quantum
    assert conn.peer_signature_algorithm == "mldsa65"
    assert conn.protocol_version == "TLSv1.3"
    assert conn.cipher.startswith("TLS_")
    assert [c.subject.rfc4514_string().split(",")[0] for c in conn.peer_certificate_chain][0] \
        .startswith("CN=localhost")
    assert len(conn.peer_certificate_chain) == 2  # leaf + intermediate
    assert conn.verify_result == (0, "ok")
    client.write(b"ping")
    assert client.read() == b"echo:ping"
    assert client.read() == b""  # the server closed with close_notify
    assert conn.state is ConnectionState.PEER_CLOSED
    client.shutdown()


def test_seed_kyber1024_word_selects_the_ml_kem_1024_hybrid(dev_pki, echo_server):
    sctx = server_context(dev_pki)
    sctx.set_kem_algorithms(["KYBER1024", "kyber768"])
    server = echo_server(sctx)
    cctx = client_context(dev_pki.ca_bundle)
    cctx.set_kem_algorithms(["KYBER1024"])
    assert cctx.groups.startswith("SecP384r1MLKEM1024")
    conn = QTLSClient(cctx).connect("localhost", server.port)
    assert conn.negotiated_group == "SecP384r1MLKEM1024"


def test_pqc_only_uses_pure_ml_kem(dev_pki, echo_server):
    server = echo_server(server_context(dev_pki, options=QTLS_OP_PQC_ONLY))
    conn = QTLSClient(client_context(dev_pki.ca_bundle, QTLS_OP_PQC_ONLY)).connect(
        "localhost", server.port)
    assert conn.negotiated_group == "MLKEM1024"


def test_classical_client_gets_classical_group_from_hybrid_server(dev_pki, echo_server):
    server = echo_server()
    conn = QTLSClient(client_context(dev_pki.ca_bundle, QTLS_OP_CLASSICAL_ONLY)).connect(
        "localhost", server.port)
    assert conn.negotiated_group == "X25519" and not conn.is_post_quantum


def test_require_pq_client_refuses_a_classical_only_server(dev_pki, echo_server):
    server = echo_server(server_context(dev_pki, options=QTLS_OP_CLASSICAL_ONLY))
    client = QTLSClient(client_context(dev_pki.ca_bundle, QTLS_OP_HYBRID_MODE | QTLS_OP_REQUIRE_PQ))
    with pytest.raises(QTLSHandshakeError) as info:
        client.connect("localhost", server.port)
    assert info.value.alert == "handshake failure"
    assert info.value.error_code is ErrorCode.HANDSHAKE


def test_mutual_tls_server_sees_client_certificate(dev_pki, echo_server):
    seen = {}

    def handler(conn: QTLSConnection) -> None:
        seen["verified"] = conn.verify_peer_certificate()
        seen["subject"] = conn.peer_certificate.subject.rfc4514_string()
        echo(conn)

    server = echo_server(server_context(
        dev_pki, verify=QTLS_VERIFY_PEER | QTLS_VERIFY_FAIL_IF_NO_PEER_CERT), handler)
    cctx = client_context(dev_pki.ca_bundle)
    cctx.use_certificate_file(dev_pki.client_cert)
    cctx.use_private_key_file(dev_pki.client_key)
    client = QTLSClient(cctx)
    client.connect("localhost", server.port)
    client.write(b"mtls")
    assert client.read() == b"echo:mtls"
    client.shutdown()
    assert seen == {"verified": True, "subject": "CN=qproxy dev client,O=qproxy development"} \
        or (seen["verified"] and "qproxy dev client" in seen["subject"])


def test_mutual_tls_client_without_certificate_is_refused_with_an_alert(dev_pki, echo_server):
    server = echo_server(server_context(
        dev_pki, verify=QTLS_VERIFY_PEER | QTLS_VERIFY_FAIL_IF_NO_PEER_CERT))
    client = QTLSClient(client_context(dev_pki.ca_bundle))
    # In TLS 1.3 the client finishes first; the server's refusal arrives with the next read.
    with pytest.raises(QTLSHandshakeError) as info:
        client.connect("localhost", server.port)
        client.read()
    assert info.value.alert == "certificate required"


def test_second_connect_resumes_the_session(dev_pki, echo_server):
    server = echo_server()
    client = QTLSClient(client_context(dev_pki.ca_bundle))
    for expected in (False, True, True):
        conn = client.connect("localhost", server.port)
        client.write(b"x")
        client.read()  # the ticket arrives after the handshake, before the reply
        assert conn.session_resumed is expected
        client.shutdown()


def test_alpn_choice_is_reported(dev_pki, echo_server):
    sctx = server_context(dev_pki)
    sctx.set_alpn_protocols(["http/1.1"])
    server = echo_server(sctx)
    cctx = client_context(dev_pki.ca_bundle)
    cctx.set_alpn_protocols(["h2", "http/1.1"])
    assert QTLSClient(cctx).connect("localhost", server.port).alpn_protocol == "http/1.1"


# -- bad input: each a clear QTLSException subclass ----------------------------------------


def test_wrong_mode_for_the_call(dev_pki):
    client_ctx = client_context(dev_pki.ca_bundle)
    with pytest.raises(QTLSModeError, match="server context"):
        QTLSServer(client_ctx, "127.0.0.1", 0)
    with pytest.raises(QTLSModeError, match="client context"):
        QTLSClient(server_context(dev_pki))
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(QTLSModeError):
            QTLSConnection(client_ctx, a).accept()
        with pytest.raises(QTLSModeError):
            QTLSConnection(server_context(dev_pki), b).connect()
    with pytest.raises(QTLSUsageError):
        QTLSContext(mode=7)


def test_read_and_write_before_connect(dev_pki):
    a, b = socket.socketpair()
    with a, b:
        conn = QTLSConnection(client_context(dev_pki.ca_bundle), a)
        with pytest.raises(QTLSStateError, match="connect"):
            conn.read()
        with pytest.raises(QTLSStateError):
            conn.write(b"x")
        with pytest.raises(QTLSStateError):
            conn.verify_peer_certificate()
    with pytest.raises(QTLSStateError, match="connect"):
        QTLSClient(client_context(dev_pki.ca_bundle)).read()
    with pytest.raises(QTLSStateError, match="no socket"):
        QTLSConnection(client_context(dev_pki.ca_bundle)).connect()


def test_closed_socket_and_closed_connection(dev_pki, echo_server):
    sock = socket.socket()
    sock.close()
    with pytest.raises(QTLSConnectionClosed, match="socket is closed"):
        QTLSConnection(client_context(dev_pki.ca_bundle), sock).connect()
    server = echo_server()
    client = QTLSClient(client_context(dev_pki.ca_bundle))
    conn = client.connect("localhost", server.port)
    client.shutdown()
    client.shutdown()  # twice is fine
    with pytest.raises(QTLSConnectionClosed, match="closed"):
        conn.read()
    with pytest.raises(QTLSConnectionClosed):
        client.write(b"x")
    with pytest.raises(QTLSConnectionClosed, match="cannot connect"):
        client.connect("127.0.0.1", 1)


def test_peer_vanishing_mid_handshake_is_connection_closed(dev_pki):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def slam() -> None:
        conn, _ = listener.accept()
        conn.recv(1)
        conn.close()

    thread = threading.Thread(target=slam)
    thread.start()
    with pytest.raises(QTLSConnectionClosed):
        QTLSClient(client_context(dev_pki.ca_bundle)).connect("localhost", port)
    thread.join(5)
    listener.close()


def test_silent_server_times_out(dev_pki):
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        client = QTLSClient(client_context(dev_pki.ca_bundle), timeout=0.3)
        with pytest.raises(QTLSTimeout) as info:
            client.connect("localhost", listener.getsockname()[1])
        assert isinstance(info.value, QTLSConnectionClosed)


def test_wrong_host_is_a_verification_error(dev_pki, echo_server):
    server = echo_server()
    client = QTLSClient(client_context(dev_pki.ca_bundle))
    with pytest.raises(QTLSVerificationError) as info:
        client.connect("127.0.0.1", server.port, server_hostname="ota.example.com")
    assert "hostname mismatch" in info.value.verify_reason.lower()
    assert info.value.error_code is ErrorCode.VERIFICATION
    # The IP literal is in the development certificate's SAN.
    assert client.connect("127.0.0.1", server.port).verify_peer_certificate()


def test_expired_certificate_is_a_verification_error(tmp_path, echo_server):
    now = dt.datetime.now(dt.timezone.utc)
    pki = write_ca_and_leaf(tmp_path, not_before=now - dt.timedelta(days=60),
                            not_after=now - dt.timedelta(days=1))
    sctx = QTLSContext(QTLS_SERVER_MODE)
    sctx.use_certificate_file(pki["cert"])
    sctx.use_private_key_file(pki["key"])
    server = echo_server(sctx)
    with pytest.raises(QTLSVerificationError, match="certificate has expired") as info:
        QTLSClient(client_context(pki["ca"])).connect("localhost", server.port)
    assert info.value.verify_code == 10  # X509_V_ERR_CERT_HAS_EXPIRED


def test_untrusted_issuer_is_a_verification_error(dev_pki, tmp_path, echo_server):
    other = write_ca_and_leaf(tmp_path)
    server = echo_server()
    with pytest.raises(QTLSVerificationError, match="local issuer"):
        QTLSClient(client_context(other["ca"])).connect("localhost", server.port)


def test_verify_none_connects_but_reports_unverified(tmp_path, dev_pki, echo_server):
    other = write_ca_and_leaf(tmp_path)
    server = echo_server()
    ctx = client_context(other["ca"])
    ctx.set_verify_mode(QTLS_VERIFY_NONE)
    client = QTLSClient(ctx)
    client.connect("localhost", server.port)
    assert client.verify_peer_certificate() is False


def test_bad_files_and_arguments_name_the_problem(dev_pki, tmp_path):
    ctx = QTLSContext(QTLS_SERVER_MODE)
    with pytest.raises(QTLSConfigError, match="does not exist") as info:
        ctx.use_certificate_file(tmp_path / "missing.pem")
    assert info.value.path.endswith("missing.pem")
    ctx.use_certificate_file(dev_pki.mldsa_cert)
    with pytest.raises(QTLSConfigError, match="does not match"):
        ctx.use_private_key_file(dev_pki.ecdsa_key)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(QTLSConfigError, match="not a usable private key"):
        ctx.use_private_key_file(junk)
    with pytest.raises(QTLSConfigError, match="no PEM certificate"):
        ctx.load_verify_locations(junk)
    with pytest.raises(QTLSUsageError, match="one of"):
        ctx.set_options(QTLS_OP_HYBRID_MODE | QTLS_OP_PQC_ONLY)
    assert ctx.options == QTLS_OP_HYBRID_MODE  # a refused call changes nothing
    with pytest.raises(QTLSUsageError, match="unknown key-exchange"):
        ctx.set_kem_algorithms(["kyber9000"])
    with pytest.raises(QTLSUsageError, match="unknown signature"):
        ctx.set_signature_algorithms(["dilithium9"])
    with pytest.raises(QTLSUsageError, match="need QTLS_VERIFY_PEER"):
        ctx.set_verify_mode(QTLS_VERIFY_FAIL_IF_NO_PEER_CERT)
    with pytest.raises(QTLSHSMError, match="not a pkcs11: URI"):
        ctx.use_hsm_key("file:/etc/key.pem")


def test_port_in_use_is_a_config_error(dev_pki):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(QTLSConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            QTLSServer(server_context(dev_pki), "127.0.0.1", port)


def test_key_before_certificate_is_checked_too(dev_pki):
    ctx = QTLSContext(QTLS_SERVER_MODE)
    ctx.use_private_key_file(dev_pki.ecdsa_key)
    with pytest.raises(QTLSConfigError, match="does not match the key loaded before it"):
        ctx.use_certificate_file(dev_pki.mldsa_cert)
    ctx = QTLSContext(QTLS_SERVER_MODE)
    ctx.use_private_key_file(dev_pki.mldsa_key)
    ctx.use_certificate_file(dev_pki.mldsa_cert)  # the right pair, in the other order
    # Two pairs (one per key type), each in either order, are not mistaken for mismatches.
    ctx.use_certificate_file(dev_pki.ecdsa_cert)
    ctx.use_private_key_file(dev_pki.ecdsa_key)
    ctx.use_private_key_file(dev_pki.rsa_key)
    ctx.use_certificate_file(dev_pki.rsa_cert)
    with pytest.raises(QTLSConfigError, match="does not match"):
        ctx.use_certificate_file(dev_pki.ecdsa_cert)
        ctx.use_private_key_file(dev_pki.rsa_key)


def test_write_refuses_text(dev_pki, echo_server):
    server = echo_server()
    client = QTLSClient(client_context(dev_pki.ca_bundle))
    client.connect("localhost", server.port)
    with pytest.raises(QTLSUsageError, match="encode text"):
        client.write("text")  # type: ignore[arg-type]
    client.write(b"bytes still work")
    assert client.read() == b"echo:bytes still work"


def test_every_error_is_a_qtls_exception_with_a_code():
    import qproxy.qtls as qtls

    for name in qtls.__all__:
        obj = getattr(qtls, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, QTLSException)
            assert isinstance(obj.error_code, ErrorCode)


def test_a_failed_handshake_does_not_stop_the_server(dev_pki, echo_server, tmp_path, caplog):
    caplog.set_level("INFO", logger="qproxy.qtls.server")
    server = echo_server()
    other = write_ca_and_leaf(tmp_path)
    for _ in range(3):
        with pytest.raises(QTLSVerificationError):
            QTLSClient(client_context(other["ca"])).connect("localhost", server.port)
        raw = socket.create_connection(("127.0.0.1", server.port))
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS at all
        raw.close()
    client = QTLSClient(client_context(dev_pki.ca_bundle))
    client.connect("localhost", server.port)
    client.write(b"still here")
    assert client.read() == b"echo:still here"
    failures = [r for r in caplog.records if r.name == "qproxy.qtls.server"]
    assert len(failures) == 6  # one line per failed client, nothing else
    assert all("handshake" in r.getMessage() for r in failures)


# -- threads -------------------------------------------------------------------------------


def test_shared_contexts_across_threads(dev_pki, echo_server):
    server = echo_server()
    shared = client_context(dev_pki.ca_bundle)
    results: list[tuple[str, bytes]] = []
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            client = QTLSClient(shared)  # one connection per thread, one context for all
            for round_ in range(3):
                conn = client.connect("localhost", server.port)
                payload = f"{index}-{round_}".encode() * 100
                client.write(payload)
                reply = b""
                while len(reply) < len(payload) + 5:
                    chunk = client.read(65536)
                    if not chunk:
                        break
                    reply += chunk
                results.append((conn.negotiated_group, reply == b"echo:" + payload))
                client.shutdown()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(results) == 24
    assert all(group == "X25519MLKEM768" and ok for group, ok in results)
    assert not server.errors


def test_server_survives_running_out_of_file_descriptors(dev_pki, echo_server, caplog):
    import errno

    server = echo_server()
    real = server.server._listener

    class Flaky:
        """The listener, but the next accept() fails as with EMFILE."""

        failures = 1

        def accept(self):
            if Flaky.failures:
                Flaky.failures -= 1
                raise OSError(errno.EMFILE, "Too many open files")
            return real.accept()

        def __getattr__(self, name):
            return getattr(real, name)

    caplog.set_level("WARNING", logger="qproxy.qtls.server")
    # The acceptor thread is already blocked in the real accept(); the first client wakes it,
    # the second meets the flaky listener.
    server.server._listener = Flaky()
    client = QTLSClient(client_context(dev_pki.ca_bundle), timeout=5)
    for text in (b"one", b"two"):
        client.connect("localhost", server.port)
        client.write(text)
        assert client.read() == b"echo:" + text
        client.shutdown()
    assert Flaky.failures == 0
    assert any("Too many open files" in r.getMessage() for r in caplog.records)


def test_one_connection_two_threads_is_a_clear_error_and_shutdown_interrupts(dev_pki,
                                                                             echo_server):
    release = threading.Event()

    def silent(conn: QTLSConnection) -> None:
        release.wait(10)  # say nothing while the client's reader is blocked

    server = echo_server(handler=silent)
    client = QTLSClient(client_context(dev_pki.ca_bundle))
    conn = client.connect("localhost", server.port)
    outcome: list[BaseException] = []
    reading = threading.Event()

    def reader() -> None:
        reading.set()
        try:
            conn.read()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    reading.wait(5)
    for _ in range(100):  # until the reader holds the connection (bounded)
        if conn._busy.locked():
            break
        threading.Event().wait(0.01)
    with pytest.raises(QTLSStateError, match="another thread"):
        conn.write(b"from a second thread")
    conn.shutdown()  # from the main thread: wakes the reader
    thread.join(5)
    release.set()
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], QTLSConnectionClosed)
    assert conn.state is ConnectionState.CLOSED


def test_failed_connect_leaves_the_client_not_connected(dev_pki, echo_server):
    server = echo_server()
    client = QTLSClient(client_context(dev_pki.ca_bundle))
    client.connect("localhost", server.port)
    client.write(b"a")
    client.read()
    with pytest.raises(QTLSVerificationError):
        client.connect("127.0.0.1", server.port, server_hostname="wrong.example")
    with pytest.raises(QTLSStateError, match="not connected"):
        client.read()
    conn = client.connect("localhost", server.port)  # the first session is still offered
    client.write(b"b")
    assert client.read() == b"echo:b"
    assert conn.session_resumed


@pytest.mark.parametrize("options,daemon", [
    (QTLS_OP_HYBRID_MODE, {"hybrid_mode": True}),
    (QTLS_OP_HYBRID_MODE | QTLS_OP_REQUIRE_PQ, {"hybrid_mode": True, "require_pq": True}),
    (QTLS_OP_PQC_ONLY, {"pqc_only": True}),
    (QTLS_OP_CLASSICAL_ONLY, {"hybrid_mode": False}),
])
@pytest.mark.parametrize("words", [(), ("kyber768", "x25519", "kyber1024", "ecdhe-p384"),
                                   ("KYBER1024",)])
def test_options_give_the_daemons_group_lists(options, daemon, words):
    """One engine, two faces: the same policy words and flags, the same OpenSSL list."""
    from qproxy.tls.policy import build_policy

    ctx = QTLSContext(QTLS_CLIENT_MODE)
    ctx.set_options(options)
    ctx.set_kem_algorithms(words)
    assert ctx.groups == build_policy(tuple(w.lower() for w in words), (), (), **daemon).groups
