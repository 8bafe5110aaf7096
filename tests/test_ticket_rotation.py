"""Session-ticket key lifetime (issue 16, item 4): the master starts a new generation with
fresh ticket keys every tls.ticket_key_lifetime seconds, through the reload path."""

from __future__ import annotations

import threading
import time

from qproxy.config.model import TlsSection
from qproxy.daemon.ticket_keys import RETRY, TicketKeyClock
from qproxy.tls import openssl_ext
from tests.conftest import make_config
from tests.support.harness import client_context, http_request, tls_connect

LIFETIME = 4.0


# --- the clock -----------------------------------------------------------------------------

def test_clock_is_due_after_the_lifetime_and_renewed_by_a_new_generation():
    clock = TicketKeyClock()
    assert not clock.due(1e9) and clock.seconds_left(0) is None  # before any generation
    clock.renewed(TlsSection(ticket_key_lifetime=100), now=0)
    assert not clock.due(99.9) and clock.due(100)
    assert clock.seconds_left(40) == 60
    clock.renewed(TlsSection(ticket_key_lifetime=100), now=90)  # a SIGHUP made new keys too
    assert not clock.due(100) and clock.due(190)


def test_a_failed_rotation_is_tried_again_later():
    clock = TicketKeyClock()
    clock.renewed(TlsSection(ticket_key_lifetime=10), now=0)
    clock.failed(now=10)
    assert not clock.due(10 + RETRY - 1) and clock.due(10 + RETRY)


def test_no_rotation_without_tickets_or_with_lifetime_zero():
    clock = TicketKeyClock()
    clock.renewed(TlsSection(ticket_key_lifetime=0), now=0)
    assert clock.seconds_left(0) is None
    clock.renewed(TlsSection(ticket_key_lifetime=10, session_tickets=False), now=0)
    assert clock.seconds_left(0) is None and not clock.due(1e9)



def test_a_lifetime_below_the_floor_is_refused():
    """0.05 s made the master start a generation back to back (63 in 8 s, probed), forking
    workers nonstop; a floor of MIN_LIFETIME, or 0 (off)."""
    import pydantic
    import pytest

    from qproxy.daemon.ticket_keys import MIN_LIFETIME

    with pytest.raises(pydantic.ValidationError, match="ticket_key_lifetime"):
        TlsSection(ticket_key_lifetime=0.05)
    TlsSection(ticket_key_lifetime=0)
    TlsSection(ticket_key_lifetime=MIN_LIFETIME)


def test_a_listeners_own_tls_lifetime_rotates_too():
    """The clock read the top-level tls only: a listener with its own tls section and a
    shorter lifetime (or the only one with tickets) kept its keys for ever."""
    clock = TicketKeyClock()
    clock.renewed([TlsSection(ticket_key_lifetime=0),
                   TlsSection(ticket_key_lifetime=300),
                   TlsSection(ticket_key_lifetime=60, session_tickets=False)], now=0)
    assert clock.seconds_left(0) == 300


def test_no_rotation_while_the_previous_generation_drains():
    clock = TicketKeyClock()
    clock.renewed(TlsSection(ticket_key_lifetime=10), now=0)
    assert not clock.due(10, draining=True) and clock.due(10)

# --- the daemon ----------------------------------------------------------------------------

def rotating(dev_pki, backend, workers: int = 2, **sections):
    server = {"listen_address": "127.0.0.1", "listen_port": 0, "workers": workers}
    return make_config(dev_pki, backend["address"], server=server,
                       tls={"ticket_key_lifetime": LIFETIME}, **sections)


def _rotated(server, after: int = 0, timeout: float = LIFETIME + 30):
    return server.wait_log(lambda e: e.get("event") == "session-ticket keys rotated"
                           and e.get("generation", 0) > after, timeout)


def test_a_ticket_from_before_the_rotation_makes_a_full_handshake_after_it(
        start_server, dev_pki, backend):
    server = start_server(rotating(dev_pki, backend))
    ctx = client_context()
    # Just after a rotation, so the lifetime is ahead of us.
    first_rotation = _rotated(server)
    assert first_rotation, "no rotation within the lifetime"
    issuer = tls_connect(server.port, ctx)
    assert http_request(issuer, "GET", "/echo?ticket").status == 200  # the ticket arrives
    session = issuer.get_session()
    issuer.close()
    again = tls_connect(server.port, ctx, session=session)
    assert openssl_ext.session_reused(again), "control: the ticket resumes before a rotation"
    again.close()

    assert _rotated(server, after=first_rotation["generation"]), "no second rotation"
    after = tls_connect(server.port, ctx, session=session)
    assert http_request(after, "GET", "/echo?after").status == 200
    assert not openssl_ext.session_reused(after), "a ticket sealed with retired keys resumed"
    after.close()


def test_no_request_is_lost_across_a_rotation(start_server, dev_pki, backend):
    server = start_server(rotating(dev_pki, backend))
    failures: list[str] = []
    statuses: list[int] = []
    done = threading.Event()
    ctx = client_context()

    def client(index: int) -> None:
        deadline = time.monotonic() + LIFETIME + 40
        for attempt in range(2000):
            if done.is_set() or time.monotonic() > deadline:
                return
            try:
                conn = tls_connect(server.port, ctx)
                statuses.append(http_request(conn, "GET", f"/echo?c={index}-{attempt}").status)
                conn.close()
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    first = _rotated(server)
    second = first and _rotated(server, after=first["generation"])
    done.set()
    for thread in threads:
        thread.join(30)
    assert first and second, "fewer than two rotations under load"
    assert not failures, failures[:5]
    assert statuses and set(statuses) == {200}, set(statuses)
    assert len(statuses) >= 20


def test_rotation_uses_the_running_configuration_not_the_file(start_server, dev_pki, backend):
    """An operator half-way through editing server.json must not have it applied by a timer."""
    server = start_server(rotating(dev_pki, backend, workers=1))
    server.config_path.write_text("{ this is not JSON yet")
    rotated = _rotated(server)
    assert rotated, [e.get("event") for e in server.lines][-10:]
    assert not server.events("session-ticket key rotation failed")
    conn = tls_connect(server.port, client_context())
    assert http_request(conn, "GET", "/echo").status == 200
