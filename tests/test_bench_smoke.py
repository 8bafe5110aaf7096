"""A short run of the benchmark harness: every scenario runs and produces figures."""

from __future__ import annotations

import shutil

import pytest

from benchmarks import crypto_bound
from benchmarks import run as bench
from benchmarks import verdicts
from benchmarks.table import HEADER, Row


def test_crypto_bound_orders_the_scenarios():
    costs = crypto_bound.handshake_costs(crypto_bound.measure_primitives(seconds=0.05))
    assert (costs["X25519MLKEM768 + ML-DSA-65"].seconds
            > costs["X25519MLKEM768 + ECDSA P-256"].seconds
            > costs["X25519 + ECDSA P-256 (classical)"].seconds * 0.5)


@pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("wrk") is None,
                    reason="nginx-light and wrk are installed by `make test`")
def test_harness_smoke_run(capsys):
    assert bench.main(["--workers", "1", "--runs", "1", "--seconds", "0.3", "--big", "4194304",
                       "--idle", "50", "--slow-readers", "10", "--clients", "2"]) == 0
    out = capsys.readouterr().out
    for scenario in ("X25519MLKEM768 + ML-DSA-65", "resumed handshakes (PSK, X25519 both)",
                     "keep-alive requests", "download", "upload",
                     "download, nginx with proxy_buffering off",
                     "memory per idle TLS connection, classical, fresh worker",
                     "memory per idle TLS connection, X25519MLKEM768 + ML-DSA-65, warmed worker",
                     "memory per idle connection after one", "memory per slow reader",
                     "worker RSS left once"):
        assert scenario in out
    # Rows are printed as they finish and again in the table at the end.
    table = {line for line in out.splitlines() if line.startswith("| full handshakes")}
    assert len(table) == 4 and all("—" not in line.split("|")[3] for line in table)
    # Every target has a figure from this run (p99 latency too: the harness measures it).
    targets = [line for line in out.splitlines() if "≥" in line or "< 2 ms" in line]
    assert targets and all("not measured" not in line for line in targets)


def test_openssl_floor_lies_between_the_crypto_bound_and_zero(tmp_path):
    from benchmarks import openssl_floor, peers

    certs = peers.make_certs(tmp_path)
    floor = openssl_floor.handshake_seconds(certs.ecdsa_p256_cert, certs.ecdsa_p256_key,
                                            "X25519", "ecdsa_secp256r1_sha256", seconds=0.05)
    crypto = crypto_bound.handshake_costs(crypto_bound.measure_primitives(seconds=0.05))
    # OpenSSL does the primitives and more (transcript, tickets, records), and not 100x more.
    assert crypto["X25519 + ECDSA P-256 (classical)"].seconds * 0.5 < floor < 0.05


def test_readme_performance_table_is_the_newest_run_of_results():
    """`--write` rewrites both; a hand edit of either shows here."""
    newest = verdicts.newest_run(verdicts.RESULTS.read_text())
    assert verdicts.readme_table(newest) in verdicts.README.read_text()


def test_targets_and_readme_table_from_a_run(tmp_path):
    run = "\n".join([
        "## 2026-01-01 — 2 cores", "", verdicts.ONE_WORKER, "", HEADER,
        Row("full handshakes: X25519 + ECDSA P-256 (classical; peer nginx)", "hs/s", [700],
            [1000], bound=4000, note="per CPU-second 800 = 30% of OpenSSL's own handshake "
            "(2,500/s in-process); nginx 1,500 per CPU-second (53%)").markdown(),
        Row("keep-alive requests, 64 connections, 1 KiB (wrk)", "req/s", [4000, 4200],
            [16000]).markdown(),
        "", verdicts.MEMORY_HEADING, "", HEADER,
        Row("memory per idle TLS connection, classical, fresh worker (10 held)", "bytes",
            [25000], [14000]).markdown(),
        Row("memory per idle TLS connection, classical, warmed worker (10 held)", "bytes",
            [23900], [14000]).markdown(), ""])
    table = verdicts.targets_table(run, previous="| keep-alive requests ≥ 50 % of nginx | 28 % "
                                                 "| — | missed |")
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert "70% (700 vs 1,000)" in lines["classical full handshakes ≥ 70 % of nginx"]
    assert lines["classical full handshakes ≥ 70 % of nginx"].endswith("| met |")
    assert "| 26% (4,100 vs 16,000) | 28 % | missed |" in lines[
        "keep-alive requests ≥ 50 % of nginx"]
    # The fresh worker's figure decides; the warmed one is reported next to it.
    assert "25,000 B fresh" in lines["idle TLS connection < 24 KiB"]
    assert "23,900 B warmed" in lines["idle TLS connection < 24 KiB"]
    assert lines["idle TLS connection < 24 KiB"].endswith("| missed |")
    assert "not measured" in lines["PQ full handshakes ≥ 85 % of the crypto bound per core"]

    readme = verdicts.readme_table(run)
    assert "| full handshakes X25519 + ECDSA P-256 (classical) | 700/s (800 per CPU-s) | " \
           "1,000/s (1,500 per CPU-s) | crypto 4,000/s |" in readme
    assert "| memory per idle TLS connection, fresh / warmed worker | 25.0 KB / 23.9 KB | " \
           "14.0 KB / 14.0 KB | — |" in readme
    text = "intro\n\n## Performance\n\nwords\n\n| scenario | old |\n|---|\n| a | b |\n\nafter\n"
    replaced = verdicts.replace_readme_table(text, readme)
    assert replaced.startswith("intro\n\n## Performance\n\nwords\n\n" + readme + "\n\nafter")


def test_mutate_breaks_one_line_at_a_time_and_every_mutant_compiles(tmp_path, monkeypatch):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "mutate", verdicts.README.parent / "scripts" / "mutate.py")
    mutate = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "mutate", mutate)  # its dataclasses look themselves up
    spec.loader.exec_module(mutate)
    module = tmp_path / "qproxy" / "sample.py"
    module.parent.mkdir()
    module.write_text('"""Docstring: 1 == 1 is not mutated."""\n\n\n'
                      'def pick(items, limit=3):\n'
                      '    log.info("picked %d", limit + 1)\n'
                      '    if len(items) >= limit and not items[0]:\n'
                      '        items.clear()\n'
                      '    return items\n')
    mutants = mutate.mutants_of(module, tmp_path)
    described = {m.mutated.strip() for m in mutants}
    assert "if len(items) > limit and not items[0]:" in described
    assert "if len(items) >= limit or not items[0]:" in described
    assert "if len(items) >= limit and items[0]:" in described
    assert "def pick(items, limit=4):" in described
    assert "pass  # dropped: items.clear()" in described
    # Docstrings and logging lines say nothing about behaviour.
    assert all(m.line not in (1, 5) for m in mutants)
    assert {m.path for m in mutants} == {"qproxy/sample.py"}


def test_write_puts_the_run_first_and_the_readme_table_in_step(tmp_path, monkeypatch):
    results, readme = tmp_path / "RESULTS.md", tmp_path / "README.md"
    results.write_text("# Benchmark results\n\nHow to read it.\n\n## 2020-01-01 — old run\n\nold\n")
    readme.write_text("# qproxy\n\n## Performance\n\nwords\n\n| scenario | qtls-server | nginx | "
                      "bound |\n|---|---|---|---|\n| old | 1 | 2 | — |\n\nmore words\n")
    monkeypatch.setattr(verdicts, "RESULTS", results)
    monkeypatch.setattr(verdicts, "README", readme)
    report = "\n".join(["## 2026-01-02 — new run", "", verdicts.ONE_WORKER, "", HEADER,
                        Row("keep-alive requests, 64 connections, 1 KiB (wrk)", "req/s", [4000],
                            [16000]).markdown(), ""])
    verdicts.write(report)
    text = results.read_text()
    assert text.index("How to read it.") < text.index("## 2026-01-02") < text.index("## 2020")
    assert verdicts.readme_table(verdicts.newest_run(text)) in readme.read_text()
    assert "| old |" not in readme.read_text() and "more words" in readme.read_text()
    assert "| keep-alive requests, 64 connections | 4,000/s | 16,000/s | — |" in readme.read_text()
