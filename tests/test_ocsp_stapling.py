"""OCSP stapling in-process: configuration, --test-config warnings, the fetcher's decisions
(driven with its own clock and answers) and what a worker staples from a published file."""

from __future__ import annotations

import asyncio
import os
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from qproxy.cli import qtls_server
from qproxy.daemon.ocsp_fetcher import CertificateWatch, FetchFailed, Publisher
from qproxy.observability.metrics import Metrics
from qproxy.tls.stapling import OcspSettings, OcspTarget, PublishedResponse
from tests.support.ocsp_pki import OcspCa

URL = "http://127.0.0.1:9/"


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> OcspCa:
    ca = OcspCa(tmp_path_factory.mktemp("ocsp-ca"), URL)
    ca.issue_leaf("server")
    ca.issue_leaf("staple", must_staple=True)
    ca.issue_leaf("noaia", aia=False)
    return ca


def config(ca: OcspCa, leaf: str = "server", **certificates: Any) -> dict[str, Any]:
    pair = ca.leaves[leaf]
    return {
        "certificates": {"keypairs": [{"cert": str(pair.cert_path), "key": str(pair.key_path)}],
                         **certificates},
        "upstreams": {"app": {"servers": ["127.0.0.1:5000"]}},
    }


def test_config(tmp_path: Path, data: dict[str, Any]):
    path = tmp_path / "server.json"
    path.write_text(json.dumps(data))
    return CliRunner().invoke(qtls_server, ["--test-config", "--config", str(path)])


test_config.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("value", ["https://ocsp.example/", "ftp://x/", "http://", "http://a b/"])
def test_ocsp_responder_must_be_plain_http(tmp_path, ca, value):
    result = test_config(tmp_path, config(ca, ocsp_responder=value))
    assert result.exit_code == 1
    assert "certificates.ocsp_responder" in result.stderr, result.stderr


def test_ocsp_response_file_of_the_seed_pair_needs_server_cert(tmp_path, ca):
    result = test_config(tmp_path, config(ca, ocsp_response_file=str(tmp_path / "x.der")))
    assert result.exit_code == 1
    assert "ocsp_response_file belongs to server_cert" in result.stderr, result.stderr


def test_a_missing_response_file_is_refused_with_its_path(tmp_path, ca):
    data = config(ca)
    data["certificates"]["keypairs"][0]["ocsp_response_file"] = str(tmp_path / "missing.der")
    result = test_config(tmp_path, data)
    assert result.exit_code == 1
    assert "certificates.keypairs[0].ocsp_response_file: cannot read OCSP response file" in \
        result.stderr, result.stderr


def test_a_stale_response_file_is_a_warning(tmp_path, ca):
    stale = tmp_path / "stale.der"
    stale.write_bytes(ca.response(ca.leaves["server"], this_update=dt.datetime.now(
        dt.timezone.utc) - dt.timedelta(hours=3)))
    data = config(ca)
    data["certificates"]["keypairs"][0]["ocsp_response_file"] = str(stale)
    result = test_config(tmp_path, data)
    assert result.exit_code == 0, result.stderr
    assert "certificates.keypairs[0].ocsp_response_file" in result.stderr
    assert "is not stapled now: stale" in result.stderr


def test_must_staple_without_stapling_is_a_test_config_warning(tmp_path, ca):
    result = test_config(tmp_path, config(ca, "staple"))
    assert result.exit_code == 0, result.stderr
    assert "staple-cert.pem is a Must-Staple certificate but certificates.ocsp_stapling " \
           "is off" in result.stderr
    # Not for an ordinary certificate.
    assert "Must-Staple" not in test_config(tmp_path, config(ca)).stderr


def test_must_staple_without_a_good_response_now_is_a_test_config_warning(tmp_path, ca):
    """One bounded fetch at --test-config (nothing listens at the AIA URL here)."""
    result = test_config(tmp_path, config(ca, "staple", ocsp_stapling=True, ocsp_timeout=2))
    assert result.exit_code == 0, result.stderr
    assert "staple-cert.pem is a Must-Staple certificate and has no good OCSP response now " \
           "(http://127.0.0.1:9/" in result.stderr, result.stderr
    # With a good response file: no warning.
    good = tmp_path / "good.der"
    good.write_bytes(ca.response(ca.leaves["staple"]))
    data = config(ca, "staple", ocsp_stapling=True)
    data["certificates"]["keypairs"][0]["ocsp_response_file"] = str(good)
    result = test_config(tmp_path, data)
    assert "Must-Staple" not in result.stderr, result.stderr


def test_no_responder_url_is_a_warning(tmp_path, ca):
    result = test_config(tmp_path, config(ca, "noaia", ocsp_stapling=True))
    assert result.exit_code == 0, result.stderr
    assert "names no http:// OCSP responder" in result.stderr
    # An ocsp_responder makes it stapled.
    result = test_config(tmp_path, config(ca, "noaia", ocsp_stapling=True,
                                          ocsp_responder="http://127.0.0.1:9/"))
    assert "OCSP" not in result.stderr, result.stderr


def test_no_issuer_is_a_warning(tmp_path, ca):
    leaf = ca.leaves["server"]
    alone = tmp_path / "leaf-only.pem"
    alone.write_bytes(leaf.cert_path.read_bytes().split(b"-----END CERTIFICATE-----")[0]
                      + b"-----END CERTIFICATE-----\n")
    data = config(ca, ocsp_stapling=True)
    data["certificates"]["keypairs"][0]["cert"] = str(alone)
    result = test_config(tmp_path, data)
    assert "the issuer of leaf-only.pem is neither in its chain file nor in " \
           "certificates.ca_bundle" in result.stderr, result.stderr
    # The issuer in ca_bundle (its only certificate) is found there.
    data["certificates"]["ca_bundle"] = str(ca.ca_path)
    result = test_config(tmp_path, data)
    assert "the issuer of" not in result.stderr, result.stderr


# --- the fetcher's decisions, with its own clock ---------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)  # OCSP: seconds

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def target_for(ca: OcspCa, name: str = "server", **settings: Any) -> OcspTarget:
    from cryptography.hazmat.primitives import serialization

    leaf = ca.leaves[name].cert
    return OcspTarget(f"{name}-cert.pem", "certificates.keypairs[0]", leaf,
                      leaf.public_bytes(serialization.Encoding.DER), ca.cert, URL, None, False,
                      OcspSettings(**{"retry_interval": 30, **settings}))


class Answers:
    def __init__(self) -> None:
        self.next: bytes | Exception = FetchFailed("down", "unreachable")

    async def __call__(self, _target: OcspTarget) -> bytes:
        if isinstance(self.next, Exception):
            raise self.next
        return self.next


def watch(ca: OcspCa, tmp_path: Path, clock: Clock, answers: Answers,
          **settings: Any) -> tuple[CertificateWatch, Metrics]:
    metrics = Metrics(CollectorRegistry())
    return CertificateWatch(target_for(ca, **settings), Publisher(str(tmp_path)), metrics,
                            answers, clock), metrics


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_down_responder_keeps_the_last_good_response_until_next_update(ca, tmp_path):
    clock, answers = Clock(), Answers()
    w, metrics = watch(ca, tmp_path, clock, answers, refresh_margin=600)
    good = ca.response(ca.leaves["server"], this_update=clock.now,
                       next_update=dt.timedelta(hours=1))
    answers.next = good
    delay = asyncio.run(w.step())
    assert delay == pytest.approx(1800)  # half of the hour
    published = Path(w.publisher.path(w.target))
    assert published.read_bytes() == good
    assert value(metrics, "qtls_ocsp_response_valid", cert="server-cert.pem") == 1

    answers.next = FetchFailed("refused", "unreachable")
    clock.advance(1800)
    assert asyncio.run(w.step()) == 30  # retry interval
    assert published.read_bytes() == good  # kept
    clock.advance(1780)  # 20 s before nextUpdate: the retry waits only until it
    assert asyncio.run(w.step()) == pytest.approx(20)
    assert published.read_bytes() == good
    clock.advance(20)  # nextUpdate reached: withdrawn
    asyncio.run(w.step())
    assert not published.exists()
    assert value(metrics, "qtls_ocsp_response_valid", cert="server-cert.pem") == 0
    assert value(metrics, "qtls_ocsp_fetch_failures_total", cert="server-cert.pem",
                 reason="unreachable") == 3


def test_an_answer_that_does_not_verify_is_never_published(ca, tmp_path):
    clock, answers = Clock(), Answers()
    w, metrics = watch(ca, tmp_path, clock, answers)
    forger = OcspCa(tmp_path / "forger", URL)
    answers.next = ca.response(ca.leaves["server"], signer=ca.responder(
        issuer_key=forger.key, issuer_cert=forger.cert))
    asyncio.run(w.step())
    assert not Path(w.publisher.path(w.target)).exists()
    assert value(metrics, "qtls_ocsp_fetch_failures_total", cert="server-cert.pem",
                 reason="bad_signer") == 1
    # After a good one, a forged one leaves the good one in place.
    good = ca.response(ca.leaves["server"], this_update=clock.now)
    answers.next = good
    asyncio.run(w.step())
    answers.next = ca.response(ca.leaves["server"], "revoked", signer=ca.responder(
        issuer_key=forger.key, issuer_cert=forger.cert))
    asyncio.run(w.step())
    assert Path(w.publisher.path(w.target)).read_bytes() == good


def test_a_new_fetcher_adopts_the_published_response(ca, tmp_path):
    """After a reload the new fetcher keeps what the old one published, so a responder down
    at that moment costs nothing; a published response that no longer verifies goes."""
    clock, answers = Clock(), Answers()
    w, metrics = watch(ca, tmp_path, clock, answers)
    good = ca.response(ca.leaves["server"], this_update=clock.now)
    w.publisher.publish(w.target, good)
    w.adopt_published()
    assert w.last is not None and w.last.der == good
    asyncio.run(w.step())  # the responder is down
    assert Path(w.publisher.path(w.target)).read_bytes() == good
    clock.advance(7200)
    fresh, _ = watch(ca, tmp_path, clock, answers)
    fresh.adopt_published()
    assert fresh.last is None
    assert not Path(w.publisher.path(w.target)).exists()


def test_a_short_lived_response_is_not_fetched_in_a_loop(ca, tmp_path):
    clock, answers = Clock(), Answers()
    w, _ = watch(ca, tmp_path, clock, answers, refresh_margin=3600)
    answers.next = ca.response(ca.leaves["server"], this_update=clock.now,
                               next_update=dt.timedelta(minutes=10))
    assert asyncio.run(w.step()) == pytest.approx(150)  # a quarter of 10 minutes


# --- what a worker staples -------------------------------------------------------------------

def test_a_worker_never_staples_past_next_update(ca, tmp_path):
    leaf = ca.leaves["server"]
    now = dt.datetime.now(dt.timezone.utc)
    der = ca.response(leaf, this_update=now, next_update=dt.timedelta(seconds=60))
    path = tmp_path / "r.der"
    path.write_bytes(der)
    seen = PublishedResponse(str(path), leaf.cert.serial_number)
    assert seen.current(now.timestamp() + 1, 100.0) == der
    assert seen.current(now.timestamp() + 61, 100.5) == b""  # past nextUpdate, not re-read
    path.unlink()
    assert seen.current(now.timestamp() + 2, 100.9) == der  # within RECHECK: as read
    assert seen.current(now.timestamp() + 2, 101.1) == b""  # re-checked: withdrawn


def test_a_worker_staples_nothing_from_a_file_about_another_certificate(ca, tmp_path):
    other = ca.issue_leaf("other")
    path = tmp_path / "r.der"
    path.write_bytes(ca.response(other))
    seen = PublishedResponse(str(path), ca.leaves["server"].cert.serial_number)
    assert seen.current(dt.datetime.now(dt.timezone.utc).timestamp(), 0.0) == b""
    path.write_bytes(b"garbage")
    seen = PublishedResponse(str(path), ca.leaves["server"].cert.serial_number)
    assert seen.current(dt.datetime.now(dt.timezone.utc).timestamp(), 0.0) == b""


# --- qproxy probe reads the staple ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["good", "revoked", "forged", "none"])
def test_probe_reports_the_staple_checked_against_the_chain(ca, tmp_path, kind):
    from OpenSSL import SSL

    from qproxy.probe import format_result, probe
    from tests.test_probe import TlsServer

    leaf = ca.leaves["server"]
    forger = OcspCa(tmp_path / "forger", URL)
    staple = {"good": ca.response(leaf), "revoked": ca.response(leaf, "revoked"),
              "forged": ca.response(leaf, signer=ca.responder(issuer_key=forger.key,
                                                              issuer_cert=forger.cert)),
              "none": b""}[kind]
    context = SSL.Context(SSL.TLS_METHOD)
    context.use_certificate_chain_file(str(leaf.cert_path))
    context.use_privatekey_file(str(leaf.key_path))
    context.set_ocsp_server_callback(lambda _conn, _data: staple)
    server = TlsServer(context)
    try:
        result = probe(server.url(), cafile=str(ca.ca_path), servername="localhost",
                       resume=False)
    finally:
        server.stop()
    line = next(x for x in format_result(result).splitlines() if x.startswith("OCSP:"))
    expected = {"good": "OCSP: stapled, good (next update ",
                "revoked": "OCSP: stapled, revoked (next update ",
                "forged": "OCSP: stapled, INVALID: the responder certificate",
                "none": "OCSP: not stapled"}[kind]
    assert line.startswith(expected), line
    if kind in ("good", "revoked"):
        assert line.endswith("signed by the issuer)")


def test_a_cached_response_already_due_is_not_fetched_in_a_loop(ca, tmp_path):
    """A responder behind a cache keeps serving a response issued a day ago that is within
    the refresh margin of its nextUpdate: its refresh time has passed as soon as it arrives.
    The next fetch waits the retry interval (never less than half the time left), not the
    0.2 s floor, which asked the CA five times a second until nextUpdate."""
    clock, answers = Clock(), Answers()
    w, _ = watch(ca, tmp_path, clock, answers, refresh_margin=3600)
    answers.next = ca.response(ca.leaves["server"],
                               this_update=clock.now - dt.timedelta(days=1),
                               next_update=clock.now + dt.timedelta(minutes=30))
    assert asyncio.run(w.step()) == pytest.approx(30)  # the retry interval
    assert Path(w.publisher.path(w.target)).exists()  # still stapled meanwhile
    answers.next = ca.response(ca.leaves["server"],
                               this_update=clock.now - dt.timedelta(days=1),
                               next_update=clock.now + dt.timedelta(seconds=10))
    assert asyncio.run(w.step()) == pytest.approx(5)  # half the 10 s left


def test_two_listeners_certificates_of_one_file_name_get_distinct_labels(ca, tmp_path):
    """Two listeners, each with its own .../<name>/fullchain.pem: one gauge series each (they
    overwrote each other's qtls_ocsp_response_valid{cert="fullchain.pem"}); a certificate
    shared by both listeners stays one target."""
    import dataclasses

    from qproxy.daemon.ocsp_fetcher import distinct_targets

    ca.issue_leaf("other")
    a = dataclasses.replace(target_for(ca, "server"), label="fullchain.pem",
                            cert_path="/le/live/a.example/fullchain.pem")
    b = dataclasses.replace(target_for(ca, "other"), label="fullchain.pem",
                            cert_path="/le/live/b.example/fullchain.pem")
    found = distinct_targets([a, b, a])
    assert [t.label for t in found] == ["a.example/fullchain.pem", "b.example/fullchain.pem"]


def test_a_full_disk_keeps_the_published_response_and_tells_the_truth(ca, tmp_path):
    """The private directory's file system full: the new response cannot be published. It was
    taken as the last good one all the same (the exception left step() after `last` was set),
    so once the published, older response expired the gauge still said 1 and nothing was
    stapled. Now the failure is counted ('publish'), the published one stays the last good,
    and it is withdrawn at its own nextUpdate."""
    from tests.support.tmpfs import fill, small_tmpfs

    clock, answers = Clock(), Answers()
    with small_tmpfs(tmp_path / "ocsp", "64k") as directory:
        metrics = Metrics(CollectorRegistry())
        w = CertificateWatch(target_for(ca), Publisher(str(directory)), metrics, answers, clock)
        old = ca.response(ca.leaves["server"], this_update=clock.now,
                          next_update=dt.timedelta(minutes=20))
        answers.next = old
        asyncio.run(w.step())
        fill(directory)
        clock.advance(600)
        answers.next = ca.response(ca.leaves["server"], this_update=clock.now,
                                   next_update=dt.timedelta(hours=1))
        assert asyncio.run(w.step()) == 30  # the retry interval
        published = Path(w.publisher.path(w.target))
        assert published.read_bytes() == old
        assert value(metrics, "qtls_ocsp_fetch_failures_total", cert="server-cert.pem",
                     reason="publish") == 1
        clock.advance(600)  # the published response's nextUpdate
        asyncio.run(w.step())
        assert not published.exists()
        assert value(metrics, "qtls_ocsp_response_valid", cert="server-cert.pem") == 0


def test_an_adopted_response_is_not_fetched_again_at_once(ca, tmp_path):
    """Every reload and every ticket-key rotation starts a new fetcher; it asked every
    responder again at once although the response it adopted was fresh, so a short
    tls.ticket_key_lifetime (a minute) became a request per certificate per minute to the
    CA. The first fetch waits for the adopted response's refresh time; a response file (the
    operator may have replaced it before the SIGHUP) is read again at once."""
    import dataclasses

    clock, answers = Clock(), Answers()
    w, _ = watch(ca, tmp_path, clock, answers, refresh_margin=600)
    w.publisher.publish(w.target, ca.response(ca.leaves["server"], this_update=clock.now,
                                              next_update=dt.timedelta(hours=1)))
    assert w.adopt_published() == pytest.approx(1800)
    assert w.adopt_published() == pytest.approx(1800)
    from_file = CertificateWatch(dataclasses.replace(w.target, url=None,
                                                     response_file=str(tmp_path / "r.der")),
                                 w.publisher, w.metrics, answers, clock)
    assert from_file.adopt_published() == 0
    (tmp_path / "empty").mkdir()
    nothing = CertificateWatch(w.target, Publisher(str(tmp_path / "empty")), w.metrics,
                               answers, clock)
    assert nothing.adopt_published() == 0


def test_the_private_directory_goes_in_the_first_runtime_directory(tmp_path, monkeypatch):
    """systemd sets RUNTIME_DIRECTORY to every RuntimeDirectory= entry, colon-separated;
    mkdtemp() in "/run/qtls:/run/qtls-extra" failed and the master could not start workers.
    The directory is private (0700): the workers and the fetcher are the only readers."""
    import stat

    from qproxy.daemon.ocsp_fetcher import OcspRuntime

    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{tmp_path / 'one'}:{tmp_path / 'two'}")
    runtime = OcspRuntime()
    directory = runtime.ensure_directory()
    try:
        assert Path(directory).parent == tmp_path / "one"
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    finally:
        runtime.remove()
    assert not Path(directory).exists()
