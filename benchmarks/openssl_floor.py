"""OpenSSL's own server-side cost of a full TLS 1.3 handshake: no sockets, no event loop.

Client and server run in this process over memory BIOs; only the server's calls are timed
(SSL object creation, the ClientHello and Finished processing, the server flight and the
session tickets). It sits between the crypto bound (primitives only) and a real server (which
adds the kernel's TCP work and its own code): a server cannot beat it per core, whatever its
language.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from OpenSSL import SSL

from qproxy.tls import openssl_ext

from .loadgen import ClientSpec, client_context

MAX_ROUNDS = 10  # a TLS 1.3 full handshake is 2 client flights; HelloRetryRequest adds one


def _server_context(cert: Path, key: Path) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.use_certificate_chain_file(str(cert))
    ctx.use_privatekey_file(str(key))
    openssl_ext.set_groups(ctx, "X25519MLKEM768:X25519:SecP384r1MLKEM1024")
    return ctx


def _one(server_ctx: SSL.Context, client_ctx: SSL.Context) -> float:
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    started = time.perf_counter()
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    spent = time.perf_counter() - started
    for _ in range(MAX_ROUNDS):
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        flight = openssl_ext.take_output(client)
        if not flight:
            break
        started = time.perf_counter()
        server.bio_write(flight)
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        answer = openssl_ext.take_output(server)
        spent += time.perf_counter() - started
        client.bio_write(answer)
    if not server.get_protocol_version_name() or openssl_ext.negotiated_group(server) is None:
        raise RuntimeError("the in-process handshake did not complete")
    return spent


def handshake_seconds(cert: Path, key: Path, groups: str, sigalgs: str,
                      seconds: float = 0.5, min_runs: int = 30) -> float:
    """Median server-side seconds per full handshake."""
    server_ctx = _server_context(cert, key)
    client_ctx = client_context(ClientSpec(0, groups, sigalgs))  # the load generator's own
    for _ in range(5):
        _one(server_ctx, client_ctx)  # warm the caches (provider fetches, key loading)
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while (len(samples) < min_runs or time.perf_counter() < deadline) and len(samples) < 20_000:
        samples.append(_one(server_ctx, client_ctx))
    return statistics.median(samples)
