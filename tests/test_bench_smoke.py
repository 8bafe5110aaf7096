"""A short run of the benchmark harness: every scenario runs and produces figures."""

from __future__ import annotations

import shutil

import pytest

from benchmarks import crypto_bound
from benchmarks import run as bench


def test_crypto_bound_orders_the_scenarios():
    costs = crypto_bound.handshake_costs(crypto_bound.measure_primitives(seconds=0.05))
    assert (costs["X25519MLKEM768 + ML-DSA-65"].seconds
            > costs["X25519MLKEM768 + ECDSA P-256"].seconds
            > costs["X25519 + ECDSA P-256 (classical)"].seconds * 0.5)


@pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("wrk") is None,
                    reason="nginx-light and wrk are installed by `make test`")
def test_harness_smoke_run(capsys):
    assert bench.main(["--workers", "1", "--runs", "1", "--seconds", "0.3", "--big", "4194304",
                       "--idle", "50", "--clients", "2"]) == 0
    out = capsys.readouterr().out
    for scenario in ("X25519MLKEM768 + ML-DSA-65", "resumed handshakes", "keep-alive requests",
                     "download", "upload", "memory per idle TLS connection"):
        assert scenario in out
    # Rows are printed as they finish and again in the table at the end.
    table = {line for line in out.splitlines() if line.startswith("| full handshakes")}
    assert len(table) == 4 and all("—" not in line.split("|")[3] for line in table)


def test_openssl_floor_lies_between_the_crypto_bound_and_zero(tmp_path):
    from benchmarks import openssl_floor, peers

    certs = peers.make_certs(tmp_path)
    floor = openssl_floor.handshake_seconds(certs.ecdsa_p256_cert, certs.ecdsa_p256_key,
                                            "X25519", "ecdsa_secp256r1_sha256", seconds=0.05)
    crypto = crypto_bound.handshake_costs(crypto_bound.measure_primitives(seconds=0.05))
    # OpenSSL does the primitives and more (transcript, tickets, records), and not 100x more.
    assert crypto["X25519 + ECDSA P-256 (classical)"].seconds * 0.5 < floor < 0.05
