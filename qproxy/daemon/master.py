"""The master process: binds, builds TLS contexts, forks and supervises workers, handles signals.

The nginx model. The master runs no event loop and no threads (so forking stays safe): a
`select` on the signal wake-up pipe drives everything. TLS contexts are built here, before any
fork, so that every worker of a generation shares the same session-ticket keys: a ticket issued
by one worker resumes on any other.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from ..config.listeners import Listener
from ..config.model import ServerConfig
from ..errors import ConfigError, ConfigErrors, QProxyError
from ..observability.logging import get_logger, reopen_log_files, rotate_by_size
from ..observability.metrics import Metrics, mark_process_dead
from ..observability.throttle import Throttle
from ..tls import stapling
from ..tls.context import ServerTls
from . import systemd
from .lifeline import die_with_parent
from .prepare import Prepared, PreparedListener, Purpose, prepare, restart_only_changes
from .respawn import METRICS_SLOT, OCSP_SLOT, RespawnQueue
from .ticket_keys import TicketKeyClock
from .status import StatusBoard, describe_listener
from .ocsp_fetcher import OcspRuntime
from .worker import worker_main

log = get_logger("qproxy.master")

READY_TIMEOUT = 30.0
KILL_GRACE = 5.0
# A fast stop (SIGINT) gives workers this long to close before they are killed.
FAST_STOP_GRACE = 1.0
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                   signal.SIGCHLD)
GRACEFUL_STOP = (signal.SIGTERM, signal.SIGQUIT)


def bind_listeners(address: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address `address` resolves to ('localhost' -> ::1 and
    127.0.0.1); with port 0 all of them share the port the first one got."""
    infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    unique = list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos))
    sockets: list[socket.socket] = []
    try:
        for family, sockaddr in unique:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and len(unique) > 1:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                sockaddr = (sockaddr[0], sockets[0].getsockname()[1], *sockaddr[2:])
            sock.bind(sockaddr)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bind_or_explain(address: str, port: int, backlog: int, json_path: str) -> list[socket.socket]:
    """bind_listeners, its failure naming the one setting and port that failed: the operator
    who starts a second instance, or finds the metrics port taken, must see which port."""
    try:
        return bind_listeners(address, port, backlog)
    except OSError as exc:
        raise ConfigError(json_path, f"cannot listen on {address}:{port}: "
                          f"{exc.strerror or exc}") from None


SocketKey = tuple
"""(address, port) of a listener's sockets; a port-0 listener (tests) is also keyed by name."""


def socket_key(listener: Listener) -> SocketKey:
    address, port = listener.address
    return (address, port) if port else (address, port, listener.name)


@dataclass
class ServingGeneration:
    number: int
    config: ServerConfig
    server_tls: ServerTls
    prepared: list[PreparedListener] = field(default_factory=list)
    workers: dict[int, int] = field(default_factory=dict)  # slot -> pid
    status: dict[int, int] = field(default_factory=dict)  # pid -> read end of its status pipe

    def forget(self, pid: int) -> None:
        fd = self.status.pop(pid, None)
        if fd is not None:
            os.close(fd)

    @property
    def size(self) -> int:
        return self.config.server.workers or (os.cpu_count() or 1)

    def all_tls(self) -> list[ServerTls]:
        return [p.server_tls for p in self.prepared] or [self.server_tls]

    def ocsp_targets(self) -> list:
        """Every listener's stapled certificates (the fetcher drops repeats)."""
        return [target for tls in self.all_tls() for target in tls.ocsp]


class Master:
    def __init__(self, prepared: Prepared, source: str, metrics: Metrics,
                 status: StatusBoard | None = None) -> None:
        self.source = source
        self.metrics = metrics
        self.status = status or StatusBoard(None, source)
        self.pid = os.getpid()
        self.current = ServingGeneration(1, prepared.config, prepared.server_tls,
                                         list(prepared.listeners))
        self._log_file = prepared.config.logging.file
        self.old: list[ServingGeneration] = []
        # Every listener's sockets, kept across reloads while a listener keeps its address.
        self.sockets: dict[SocketKey, list[socket.socket]] = {}
        self.metrics_socket: socket.socket | None = None
        self.metrics_pid: int | None = None
        self.ocsp = OcspRuntime()
        self.ocsp_pid: int | None = None
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        self._respawns = RespawnQueue()
        self._rotation_failures = Throttle(60.0)
        self._step_failures = Throttle(10.0)
        self._started: dict[int, float] = {}  # pid -> start time
        self._stopping = False
        self._ticket_keys = TicketKeyClock()
        self._fast_stop = False

    # -- setup ---------------------------------------------------------------------------
    @property
    def listeners(self) -> list[socket.socket]:
        return [sock for socks in self.sockets.values() for sock in socks]

    def _bind_new(self, generation: ServingGeneration) -> list[SocketKey]:
        """Bind the listeners of `generation` that have no socket yet; returns their keys.
        A port that cannot be bound closes what this call bound and raises ConfigError."""
        added: list[SocketKey] = []
        try:
            for item in generation.prepared:
                key = socket_key(item.listener)
                if key in self.sockets:
                    continue
                settings = item.listener.settings
                self.sockets[key] = bind_or_explain(
                    settings.listen_address, settings.listen_port, settings.backlog,
                    f"{item.listener.json_path}.listen_port")
                added.append(key)
        except ConfigError:
            self._close_sockets(added)
            raise
        return added

    def _close_sockets(self, keys) -> None:
        for key in keys:
            for sock in self.sockets.pop(key, []):
                sock.close()

    def _sockets_of(self, generation: ServingGeneration) -> dict[str, list[socket.socket]]:
        return {item.listener.name: self.sockets[socket_key(item.listener)]
                for item in generation.prepared}

    def _bind(self) -> None:
        inherited = systemd.inherited_listener()
        if inherited and self.current.prepared:
            self.sockets[socket_key(self.current.prepared[0].listener)] = [inherited]
        self._bind_new(self.current)
        metrics = self.current.config.metrics
        if metrics.enabled:
            self.metrics_socket = bind_or_explain(metrics.address, metrics.port, 128,
                                                  "metrics.port")[0]

    def _install_signals(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame) -> None:
        self._signals.append(signum)

    # -- children ------------------------------------------------------------------------
    def _become_child(self) -> None:
        """In a fresh child: drop the master's signal handling and descriptors."""
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        # Until the child's loop installs its own handlers, a SIGUSR1 (logrotate) or a stray
        # SIGHUP must not kill it, as their default action would.
        for signum in (signal.SIGUSR1, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        die_with_parent(self.pid)
        os.close(self._wake_r)
        os.close(self._wake_w)
        for generation in (self.current, *self.old):
            for fd in generation.status.values():
                os.close(fd)

    def _fork(self, target) -> int:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._become_child()
                code = target()
            except BaseException:  # a crashing child must never return into the master's loop
                log.exception("child process failed")
            finally:
                logging.shutdown()
                os._exit(code)
        self._started[pid] = time.monotonic()
        return pid

    def _spawn_worker(self, generation: ServingGeneration, slot: int) -> tuple[int, int]:
        ready_r, ready_w = os.pipe()

        def run() -> int:
            os.close(ready_r)
            if self.metrics_socket is not None:
                self.metrics_socket.close()
            own = self._sockets_of(generation)
            mine = {id(sock) for socks in own.values() for sock in socks}
            for sock in self.listeners:
                if id(sock) not in mine:
                    # A listener the next reload drops must close once the generation that
                    # serves it has gone, not live on in every later worker.
                    sock.close()
            return worker_main(generation.number, generation.config, generation.prepared,
                               self.metrics, own, generation.size,
                               ready_w, slot)

        try:
            pid = self._fork(run)
        except OSError:
            os.close(ready_r)
            os.close(ready_w)
            raise
        os.close(ready_w)
        generation.workers[slot] = pid
        generation.status[pid] = ready_r
        return pid, ready_r

    def _spawn_metrics(self) -> None:
        if self.metrics_socket is None:
            return
        sock, path = self.metrics_socket, self.current.config.metrics.path

        def run() -> int:
            from .metrics_server import metrics_main

            for listener in self.listeners:
                listener.close()
            return metrics_main(sock, path)

        self.metrics_pid = self._fork(run)

    def _spawn_ocsp(self) -> None:
        """The OCSP fetcher for the current generation's certificates (if any are stapled)."""
        targets = self.current.ocsp_targets()
        if not targets:
            return
        directory = self.ocsp.ensure_directory()

        def run() -> int:
            from .ocsp_fetcher import fetcher_main

            for sock in (*self.listeners, self.metrics_socket):
                if sock is not None:
                    sock.close()
            return fetcher_main(targets, directory, self.metrics)

        self.ocsp_pid = self._fork(run)

    def _restart_ocsp(self) -> None:
        if self.ocsp_pid is not None:
            try:
                os.kill(self.ocsp_pid, signal.SIGTERM)  # reaped later as an unknown child
            except ProcessLookupError:
                pass
            self.ocsp_pid = None
        self._spawn_ocsp()

    def _start_generation(self, generation: ServingGeneration) -> bool:
        """Fork a whole generation and wait until every worker listens.

        Workers that log in to an HSM start one after another: PKCS#11 tokens (SoftHSM2's
        file store among them) can fail a module initialised by several processes at once."""
        one_by_one = any(tls.uses_hsm for tls in generation.all_tls())
        for tls in generation.all_tls():
            if tls.ocsp:  # before fork: every worker inherits the callback
                stapling.attach(tls, self.ocsp.ensure_directory())
        deadline = time.monotonic() + READY_TIMEOUT
        pending: dict[int, int] = {}
        for slot in range(generation.size):
            pid, ready_fd = self._spawn_worker(generation, slot)
            pending[ready_fd] = pid
            if one_by_one and not self._await_ready(generation, pending, deadline):
                return False
        return self._await_ready(generation, pending, deadline)

    def _await_ready(self, generation: ServingGeneration, pending: dict[int, int],
                     deadline: float) -> bool:
        ok = True
        while pending and ok:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                ok = False
                break
            readable, _, _ = select.select(list(pending), [], [], remaining)
            for fd in readable:
                data = os.read(fd, 1)
                pid = pending.pop(fd)
                if data != b"R":
                    log.error("worker exited before it was ready", worker_pid=pid,
                              generation=generation.number)
                    ok = False
        if not ok:
            pending.clear()
            self._terminate(generation, signal.SIGKILL)
        return ok

    def _stop_accepting(self, generation: ServingGeneration, timeout: float = 5.0) -> None:
        """SIGTERM a generation and wait until each worker has closed its listeners, so that
        no connection made after a reload reaches the old configuration."""
        self._terminate(generation)
        waiting = dict(generation.status)
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            readable, _, _ = select.select(list(waiting.values()), [], [],
                                           max(0.0, deadline - time.monotonic()))
            for pid, fd in list(waiting.items()):
                if fd in readable:
                    data = os.read(fd, 16)
                    if not data or b"C" in data:
                        del waiting[pid]

    def _terminate(self, generation: ServingGeneration, signum: int = signal.SIGTERM) -> None:
        for pid in generation.workers.values():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    # -- events --------------------------------------------------------------------------
    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            lived = time.monotonic() - self._started.pop(pid, time.monotonic())
            self._child_exited(pid, status, lived)
            try:
                mark_process_dead(pid)  # its live gauges leave the sum
            except OSError as exc:
                # Its gauges stay in the sums until the next restart; serving is unaffected.
                log.warning("cannot drop a dead process's metrics", pid=pid, error=str(exc))

    def _child_exited(self, pid: int, status: int, lived: float) -> None:
        how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit code {os.WEXITSTATUS(status)}")
        if pid == self.ocsp_pid:
            self.ocsp_pid = None
            if not self._stopping:
                delay = self._respawns.schedule(OCSP_SLOT, lived)
                log.error("OCSP fetcher exited; restarting it", ocsp_pid=pid, status=how,
                          respawn_in_s=delay)
            return
        if pid == self.metrics_pid:
            self.metrics_pid = None
            if not self._stopping:
                delay = self._respawns.schedule(METRICS_SLOT, lived)
                log.error("metrics process exited; restarting it", metrics_pid=pid, status=how,
                          respawn_in_s=delay)
            return
        for generation in (self.current, *self.old):
            generation.forget(pid)
        for generation in self.old:
            for slot, worker in list(generation.workers.items()):
                if worker == pid:
                    del generation.workers[slot]
                    log.info("old worker finished", worker_pid=pid, generation=generation.number,
                             status=how)
        self.old = [g for g in self.old if g.workers]
        for slot, worker in list(self.current.workers.items()):
            if worker != pid:
                continue
            del self.current.workers[slot]
            if self._stopping:
                return
            delay = self._respawns.schedule(slot, lived)
            self.metrics.worker_restarts.inc()
            log.error("worker died; respawning", worker_pid=pid, status=how, slot=slot,
                      generation=self.current.number, respawn_in_s=delay)

    def _respawn_due(self) -> None:
        for slot in self._respawns.due():
            if self._stopping:
                return
            try:
                if slot == METRICS_SLOT:
                    if self.metrics_pid is None:
                        self._spawn_metrics()
                elif slot == OCSP_SLOT:
                    if self.ocsp_pid is None:
                        self._spawn_ocsp()
                elif slot not in self.current.workers:
                    pid, _ = self._spawn_worker(self.current, slot)
                    log.info("worker respawned", worker_pid=pid, slot=slot,
                             generation=self.current.number)
            except OSError as exc:  # fork or pipe failed: out of processes, memory or fds
                delay = self._respawns.schedule(slot, lived=0.0)
                log.error("cannot start a child process; trying again", slot=slot,
                          error=str(exc), retry_in_s=delay)

    def _reload(self, purpose: Purpose = Purpose.RELOAD) -> None:
        """SIGHUP: the new configuration through the same `prepare()` a start uses; on any
        failure the old generation keeps serving. Purpose.ROTATE: the same with the running
        configuration, for fresh session-ticket keys."""
        systemd.reloading()
        old = self.current
        try:
            prepared = prepare(self.source, purpose, old.config)
        except QProxyError as exc:
            self._reload_failed(old, exc, purpose)
            return
        config, server_tls = prepared.config, prepared.server_tls
        unapplied = restart_only_changes(old.config, config)
        if unapplied:
            log.warning("changed settings that apply only on restart; still using the old "
                        "values", settings=unapplied)
        new = ServingGeneration(old.number + 1, config, server_tls, list(prepared.listeners))
        try:
            # New ports are bound before any new worker starts: one that cannot be bound
            # fails the reload while the old generation serves on.
            added = self._bind_new(new)
        except ConfigError as exc:
            self._reload_failed(old, ConfigErrors(self.source, [exc]), purpose)
            return
        try:
            started = self._start_generation(new)
        except OSError as exc:  # fork or pipe: out of processes, memory or descriptors
            self._terminate(new, signal.SIGKILL)
            self.old.append(new)  # reaped like any finishing generation
            self._close_sockets(added)
            self._reload_failed(old, QProxyError(f"cannot start the new workers: {exc}"), purpose)
            return
        if not started:  # its workers were killed: reaped (and their pipes closed) as an old one
            self.old.append(new)
            self._close_sockets(added)
            self._reload_failed(old, QProxyError("the new workers did not start"), purpose)
            return
        self.current = new
        self._ticket_keys.renewed(self._tls_sections(new), time.monotonic())
        self._respawns.new_generation()
        self._restart_ocsp()
        self._stop_accepting(old)
        self.old.append(old)
        # Listeners the new configuration dropped: the old workers have closed their copies
        # (they said so before _stop_accepting returned); the master's goes now.
        kept = {socket_key(item.listener) for item in new.prepared}
        removed = [key for key in self.sockets if key not in kept]
        self._close_sockets(removed)
        if purpose is Purpose.ROTATE:
            self.metrics.ticket_key_rotations.labels("ok").inc()
        else:
            self.metrics.reloads.labels("ok").inc()
        self.status.reload_done(True, new.number)
        self.metrics.generation.set(new.number)
        self.metrics.workers.set(new.size)
        for warning in prepared.warnings:
            log.warning("configuration warning", detail=warning)
        log.info("session-ticket keys rotated" if purpose is Purpose.ROTATE else "reloaded",
                 generation=new.number, workers=list(new.workers.values()),
                 listeners=self._ports(new),
                 groups=server_tls.policy.groups,
                 certificates=[p.key_kind for p in server_tls.pairs])
        systemd.notify("READY=1")

    def _reload_failed(self, old: ServingGeneration, error: QProxyError,
                       purpose: Purpose = Purpose.RELOAD) -> None:
        problems = ([str(e) for e in error.errors] if isinstance(error, ConfigErrors)
                    else [str(error)])
        if purpose is Purpose.ROTATE:
            self._ticket_keys.failed(time.monotonic())
            self.metrics.ticket_key_rotations.labels("failed").inc()
            log.error("session-ticket key rotation failed; the current keys stay in use and "
                      "it is tried again", generation=old.number, errors=problems)
        else:
            self.status.reload_done(False, old.number, problems)
            self.metrics.reloads.labels("failed").inc()
            log.error("reload failed; still serving the previous configuration",
                      generation=old.number, error=str(error), errors=problems)
        systemd.notify("READY=1")

    def _dispatch(self, signum: int) -> None:
        if signum in GRACEFUL_STOP:
            self._stopping = True
        elif signum == signal.SIGINT:  # nginx's fast stop (qproxy stop); also Ctrl-C
            self._stopping = self._fast_stop = True
        elif signum == signal.SIGHUP:
            self._reload()
        elif signum == signal.SIGUSR1:
            reopen_log_files()
            children = [pid for generation in (self.current, *self.old)
                        for pid in generation.workers.values()]
            children += [pid for pid in (self.metrics_pid, self.ocsp_pid) if pid is not None]
            for pid in children:
                try:
                    os.kill(pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass
            log.info("log files reopened")

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT. Returns (or raises) only once every child is gone, so
        that what the process tree shares (the metrics directory) can go with it."""
        try:
            return self._run()
        except BaseException:
            if os.getpid() == self.pid and (self._workers_alive() or self.metrics_pid):
                log.exception("the master failed; stopping its workers")
                self._shutdown()
            raise

    def _run(self) -> int:
        self._bind()
        self._install_signals()
        self._spawn_metrics()
        if not self._start_generation(self.current):
            log.error("workers did not start; giving up")
            self._shutdown()
            return 1
        generation = self.current
        self._ticket_keys.renewed(self._tls_sections(generation), time.monotonic())
        self.metrics.generation.set(generation.number)
        self.metrics.workers.set(generation.size)
        self._safely(self._publish)  # before "listening": whoever saw that line finds the status
        log.info("listening", address=generation.config.server.listen_address,
                 port=self.listeners[0].getsockname()[1], listeners=self._ports(generation),
                 metrics_port=self.metrics_socket.getsockname()[1] if self.metrics_socket else None,
                 workers=list(generation.workers.values()), groups=generation.server_tls.policy.groups,
                 certificates=[p.key_kind for p in generation.server_tls.pairs],
                 upstreams={n: list(u.servers) for n, u in generation.config.upstreams.items()})
        self._spawn_ocsp()
        systemd.notify("READY=1", f"MAINPID={os.getpid()}")
        watchdog = systemd.watchdog_interval()
        next_ping = time.monotonic()
        while not self._stopping:
            timeout = 1.0
            next_respawn = self._respawns.seconds_to_next()
            if next_respawn is not None:
                timeout = min(timeout, next_respawn)
            if watchdog:
                timeout = min(timeout, max(0.0, next_ping - time.monotonic()))
            rotation = self._ticket_keys.seconds_left(time.monotonic())
            if rotation is not None:
                timeout = min(timeout, rotation)
            try:
                select.select([self._wake_r], [], [], timeout)
            except InterruptedError:
                pass
            self._drain_wakeups()
            signals, self._signals = self._signals, []
            for signum in signals:
                try:
                    self._dispatch(signum)
                except Exception as exc:  # noqa: BLE001 - the master outlives any signal's work
                    log.exception("handling a signal failed; still serving",
                                  signal=signal.Signals(signum).name)
                    if signum == signal.SIGHUP:  # counted, and READY=1 for systemd
                        self._reload_failed(self.current, QProxyError(
                            f"unexpected {type(exc).__name__}: {exc}"))
            for step in (self._reap, self._respawn_due, self._rotate_log,
                         self._rotate_ticket_keys, self._publish):
                self._safely(step)
            if watchdog and time.monotonic() >= next_ping:
                systemd.notify("WATCHDOG=1")
                next_ping = time.monotonic() + watchdog
        self._shutdown()
        return 0

    def _safely(self, step: Callable[[], None]) -> None:
        """One step of the loop; a failure in it is logged (throttled), never the master's end."""
        try:
            step()
        except Exception:  # noqa: BLE001 - a supervisor that dies takes every worker's clients
            if self._step_failures.hit() is not None:
                log.exception("master loop step failed; still serving", step=step.__name__)

    @staticmethod
    def _tls_sections(generation: ServingGeneration) -> list:
        return [item.listener.tls for item in generation.prepared] or [generation.config.tls]

    def _rotate_ticket_keys(self) -> None:
        now = time.monotonic()
        draining = any(g.workers for g in self.old)
        if self._ticket_keys.due(now, draining) and not self._stopping:
            self._ticket_keys.failed(now)  # the next try, unless this one renews the clock
            self._reload(Purpose.ROTATE)

    def _publish(self) -> None:
        """The status file (`qproxy status`), rewritten only when what it says changed."""
        self.status.publish(
            state="stopping" if self._stopping else "running",
            generation=self.current.number,
            workers=[pid for _, pid in sorted(self.current.workers.items())],
            draining={g.number: sorted(g.workers.values()) for g in self.old if g.workers},
            listeners=[describe_listener(sock, item.listener.mode, item.listener.name)
                       for item in self.current.prepared
                       for sock in self.sockets.get(socket_key(item.listener), [])],
            metrics=(describe_listener(self.metrics_socket, "metrics", "metrics")
                     if self.metrics_socket else None))

    def _rotate_log(self) -> None:
        """The file written is the one configured at start (logging.file needs a restart); the
        rotation size and count follow reloads. A rotation that fails is logged (once a
        minute at most) and tried again: it is no reason to stop serving."""
        section = self.current.config.logging
        if not self._log_file:
            return
        try:
            if rotate_by_size(self._log_file, section.max_size_mb * 1024 * 1024,
                              section.max_files):
                reopen_log_files()
        except OSError as exc:
            if self._rotation_failures.hit() is not None:
                log.error("log rotation failed", file=self._log_file, error=exc.strerror)

    def _shutdown(self) -> None:
        self._stopping = True
        systemd.notify("STOPPING=1")
        self._safely(self._publish)
        timeout = self.current.config.server.shutdown_timeout
        if self._fast_stop:
            log.info("stopping fast: connections in flight are cut", grace_s=FAST_STOP_GRACE)
        else:
            log.info("stopping: no new connections, finishing requests in flight",
                     timeout_s=timeout)
        for listener in self.listeners:
            listener.close()
        for generation in (self.current, *self.old):
            self._terminate(generation)
        deadline = time.monotonic() + (FAST_STOP_GRACE if self._fast_stop
                                       else timeout + KILL_GRACE)
        while self._workers_alive() and time.monotonic() < deadline:
            try:
                select.select([self._wake_r], [], [], 0.1)
            except InterruptedError:
                pass
            self._drain_wakeups()
            self._reap()
            if signal.SIGINT in self._signals and not self._fast_stop:
                # `qproxy stop` (or a second Ctrl-C) during a graceful drain: cut it short.
                self._fast_stop = True
                deadline = min(deadline, time.monotonic() + FAST_STOP_GRACE)
                log.info("stopping fast: connections in flight are cut", grace_s=FAST_STOP_GRACE)
        for generation in (self.current, *self.old):
            self._terminate(generation, signal.SIGKILL)
        for pid in (self.metrics_pid, self.ocsp_pid):
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE
        while ((self._workers_alive() or self.metrics_pid or self.ocsp_pid)
               and time.monotonic() < deadline):
            time.sleep(0.05)
            self._reap()
        self.ocsp.remove()
        log.info("stopped")

    def _ports(self, generation: ServingGeneration) -> dict[str, int]:
        """Listener name -> the port it listens on (what port 0 became)."""
        return {name: socks[0].getsockname()[1]
                for name, socks in self._sockets_of(generation).items() if socks}

    def _workers_alive(self) -> bool:
        return any(g.workers for g in (self.current, *self.old))
