"""Per-name certificates (certificates.sni): the client's server name picks the certificate."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from qproxy import pki
from tests.conftest import make_config
from tests.support.harness import client_context, http_request, tls_connect


def _pairs(dev: pki.DevPki) -> list[dict[str, str]]:
    return [{"cert": str(dev.mldsa_cert), "key": str(dev.mldsa_key)},
            {"cert": str(dev.ecdsa_cert), "key": str(dev.ecdsa_key)}]


def _leaf(path) -> bytes:
    return x509.load_pem_x509_certificates(path.read_bytes())[0].fingerprint(hashes.SHA256())


CASES = [
    ("api.test", "api"),
    ("API.Test", "api"),  # names compare case-insensitively
    ("x.wild.test", "wild"),  # a wildcard entry covers one label
    ("a.b.wild.test", "default"),  # ...and only one
    ("localhost", "default"),
    ("unknown.test", "default"),
]


def test_server_name_selects_the_certificate(start_server, dev_pki, backend, tmp_path):
    api = pki.init(tmp_path / "api", server_names=("api.test",))
    wild = pki.init(tmp_path / "wild", server_names=("*.wild.test",))
    server = start_server(make_config(dev_pki, backend["address"], certificates={
        "sni": {"api.test": _pairs(api), "*.wild.test": _pairs(wild)}}))
    for name, expected in CASES:
        owner = {"api": api, "wild": wild, "default": dev_pki}[expected]
        # The client verifies the chain against the selected PKI's own CA: only the right
        # certificate (with its whole chain) passes. Both of the name's pairs are reachable.
        for sigalgs, cert in (("mldsa65", owner.mldsa_cert),
                              ("ecdsa_secp384r1_sha384", owner.ecdsa_cert)):
            ctx = client_context(sigalgs=sigalgs, cafile=owner.ca_bundle)
            conn = tls_connect(server.port, ctx, servername=name)
            leaf = conn.get_peer_certificate().to_cryptography().fingerprint(hashes.SHA256())
            assert leaf == _leaf(cert), f"{name} ({sigalgs}) got another certificate"
            assert http_request(conn, "GET", "/echo", host=name).status == 200
