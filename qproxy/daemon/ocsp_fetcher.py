"""The OCSP fetcher: a child of the master that keeps each stapled response fresh.

It is a process of its own, supervised like the metrics process, because the master runs no
event loop and no threads (forking must stay safe) and a responder may take seconds to answer.
For each certificate (tls.stapling.OcspTarget) one task: obtain a response (POST to the
responder, bounded in time and size, or read the operator's response file), verify it
(tls.ocsp), publish it atomically for the workers, and come back at the refresh time. When
that fails, the last good response stays published until its nextUpdate and is then withdrawn;
every failure is logged and counted. A response that does not verify is never published.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import shutil
import signal
import tempfile
from typing import TYPE_CHECKING, Awaitable, Callable

from ..config.files import read_regular
from ..errors import ConfigError
from ..observability.cert_expiry import cert_labels
from ..observability.logging import get_logger, reopen_log_files

if TYPE_CHECKING:
    # Not at run time: prepare() imports this module for the Must-Staple check, and
    # prometheus_client must not be imported before PROMETHEUS_MULTIPROC_DIR is set (cli.py),
    # or every process keeps its metrics to itself and /metrics is empty.
    from ..observability.metrics import Metrics
from ..tls.ocsp import MAX_RESPONSE_SIZE, OcspInvalid, VerifiedResponse, build_request
from ..tls.ocsp import verify_response
from ..tls.stapling import OcspTarget

log = get_logger("qproxy.ocsp")

MIN_DELAY = 0.2
MAX_DELAY = 3600.0
"""A task wakes at least hourly, so a changed clock or response file is noticed."""


class FetchFailed(Exception):
    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def fetch(url: str, request: bytes, timeout: float) -> bytes:
    """POST an OCSP request (RFC 6960 A.1); the body of a 200 answer, at most
    MAX_RESPONSE_SIZE bytes, within `timeout` seconds all told (name lookup included)."""
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.post(url, data=request, allow_redirects=False, headers={
                    "Content-Type": "application/ocsp-request",
                    "Accept": "application/ocsp-response"}) as response:
                if response.status != 200:
                    raise FetchFailed(f"{url} answered HTTP {response.status}", "http_status")
                body = bytearray()
                async for chunk in response.content.iter_chunked(16384):
                    body += chunk
                    if len(body) > MAX_RESPONSE_SIZE:
                        raise FetchFailed(f"{url} sent more than {MAX_RESPONSE_SIZE} bytes",
                                          "too_large")
                return bytes(body)
    except asyncio.TimeoutError:
        raise FetchFailed(f"{url} did not answer within {timeout:g} s", "timeout") from None
    except aiohttp.ClientError as exc:
        raise FetchFailed(f"{url}: {exc or type(exc).__name__}", "unreachable") from None


class Publisher:
    """The workers' view: one DER file per certificate, replaced atomically."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, target: OcspTarget) -> str:
        return os.path.join(self.directory, target.file_name)

    def publish(self, target: OcspTarget, der: bytes) -> None:
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".new-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(der)
            os.replace(temp, self.path(target))
        except BaseException:
            os.unlink(temp)
            raise

    def withdraw(self, target: OcspTarget) -> None:
        try:
            os.unlink(self.path(target))
        except FileNotFoundError:
            pass

    def published(self, target: OcspTarget) -> bytes | None:
        try:
            with open(self.path(target), "rb") as file:
                return file.read(MAX_RESPONSE_SIZE + 1)
        except OSError:
            return None


Obtain = Callable[[OcspTarget], Awaitable[bytes]]


async def obtain_response(target: OcspTarget) -> bytes:
    """The response as the operator's file holds it or the responder sends it, unchecked."""
    if target.response_file is not None:
        try:
            return read_regular(target.response_file, target.json_path,
                                "OCSP response file", MAX_RESPONSE_SIZE)
        except ConfigError as exc:
            raise FetchFailed(exc.problem, "file") from None
    assert target.url is not None
    return await fetch(target.url, build_request(target.leaf, target.issuer),
                       target.settings.timeout)


class CertificateWatch:
    """Keeps one certificate's response fresh. `step()` does one round and says how long to
    wait before the next; tests drive it with their own clock and `obtain`."""

    def __init__(self, target: OcspTarget, publisher: Publisher, metrics: Metrics,
                 obtain: Obtain | None = None,
                 clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.target = target
        self.settings = target.settings
        self.publisher = publisher
        self.metrics = metrics
        self.obtain = obtain or self._obtain
        self.clock = clock
        self.last: VerifiedResponse | None = None

    async def _obtain(self, target: OcspTarget) -> bytes:
        return await obtain_response(target)

    def adopt_published(self) -> float:
        """After a reload or a restart of this process: a response already published is kept
        (re-verified) as the last good one, so a responder down right now costs nothing.
        Returns the seconds to wait before the first fetch: the adopted response's refresh
        time (every reload and ticket-key rotation starts a fetcher; the CA need not hear of
        it), or 0 — nothing adopted, or a response file, which the operator may have just
        replaced."""
        der = self.publisher.published(self.target)
        if der is None:
            return 0.0
        now = self.clock()
        try:
            self.last = verify_response(der, self.target.leaf, self.target.issuer, now)
        except OcspInvalid:
            self.publisher.withdraw(self.target)
            return 0.0
        self._set_gauges(self.last)
        return 0.0 if self.target.response_file is not None else self._refresh_delay(now,
                                                                                     self.last)

    async def step(self) -> float:
        now = self.clock()
        source = self.target.response_file or self.target.url
        try:
            der = await self.obtain(self.target)
            response = verify_response(der, self.target.leaf, self.target.issuer, now)
        except (FetchFailed, OcspInvalid) as exc:
            return self._failed(now, source, str(exc), exc.kind)
        try:
            self.publisher.publish(self.target, response.der)
        except OSError as exc:  # the directory's file system full or gone: workers still
            # have what was published before, so that stays the last good response
            return self._failed(now, source, f"cannot publish it for the workers in "
                                f"{self.publisher.directory}: {exc.strerror or exc}", "publish")
        changed = (self.last is None or self.last.status is not response.status)
        self.last = response
        self._set_gauges(response)
        (log.info if changed else log.debug)(
            "OCSP response stapled", cert=self.target.label, status=response.status.value,
            next_update=f"{response.next_update:%Y-%m-%dT%H:%M:%SZ}", signer=response.signer,
            source=source)
        return self._refresh_delay(now, response)

    def _refresh_delay(self, now: dt.datetime, response: VerifiedResponse) -> float:
        margin = dt.timedelta(seconds=self.settings.refresh_margin)
        # A cached response can be due for refresh the moment it arrives (issued long ago,
        # nextUpdate within the margin): asking again at once would get the same one, so the
        # next try comes at the retry pace, or half way to nextUpdate if that is sooner.
        earliest = now + min(dt.timedelta(seconds=self.settings.retry_interval),
                             (response.next_update - now) / 2)
        return self._delay(now, max(response.refresh_at(margin), earliest))

    def _failed(self, now: dt.datetime, source: str | None, reason: str, kind: str) -> float:
        self.metrics.ocsp_fetch_failures.labels(self.target.label, kind).inc()
        retry = now + dt.timedelta(seconds=self.settings.retry_interval)
        last = self.last
        if last is not None and last.valid_at(now):
            log.warning("OCSP refresh failed; the last good response stays stapled until its "
                        "nextUpdate", cert=self.target.label, source=source, error=reason,
                        next_update=f"{last.next_update:%Y-%m-%dT%H:%M:%SZ}")
            return self._delay(now, min(retry, last.next_update))
        if last is not None:
            log.error("OCSP response expired and no new one verifies; nothing is stapled",
                      cert=self.target.label, source=source, error=reason,
                      must_staple=self.target.must_staple)
        else:
            log.error("no valid OCSP response to staple", cert=self.target.label,
                      source=source, error=reason, must_staple=self.target.must_staple)
        self.last = None
        self.publisher.withdraw(self.target)
        self.metrics.ocsp_response_valid.labels(self.target.label).set(0)
        self.metrics.ocsp_next_update.labels(self.target.label).set(0)
        return self._delay(now, retry)

    def _set_gauges(self, response: VerifiedResponse) -> None:
        self.metrics.ocsp_response_valid.labels(self.target.label).set(1)
        self.metrics.ocsp_next_update.labels(self.target.label).set(
            response.next_update.timestamp())

    @staticmethod
    def _delay(now: dt.datetime, until: dt.datetime) -> float:
        return min(MAX_DELAY, max(MIN_DELAY, (until - now).total_seconds()))

    async def run(self) -> None:
        await asyncio.sleep(self.adopt_published())
        while True:
            try:
                delay = await self.step()
            except Exception:  # noqa: BLE001 - one certificate's bug must not stop the others
                log.exception("OCSP refresh step failed", cert=self.target.label)
                delay = self.settings.retry_interval
            await asyncio.sleep(delay)


def must_staple_warnings(targets: list[OcspTarget]) -> list[str]:
    """For `--test-config`: each Must-Staple certificate whose response cannot be had and
    verified right now (one bounded attempt each, at the same time)."""
    must = [t for t in targets if t.must_staple]
    if not must:
        return []

    async def check(target: OcspTarget) -> str | None:
        try:
            verify_response(await obtain_response(target), target.leaf, target.issuer,
                            _utcnow())
        except (FetchFailed, OcspInvalid) as exc:
            return (f"{target.json_path}: {target.label} is a Must-Staple certificate and has "
                    f"no good OCSP response now ({exc}); clients that enforce Must-Staple "
                    "will refuse it until one is fetched")
        return None

    async def check_all() -> list[str | None]:
        return await asyncio.gather(*(check(t) for t in must))

    return [w for w in asyncio.run(check_all()) if w]


async def _watch_all(targets: list[OcspTarget], directory: str, metrics: Metrics) -> int:
    publisher = Publisher(directory)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, reopen_log_files)
    for target in targets:  # every series exists from the start, 0 until a response verifies
        metrics.ocsp_response_valid.labels(target.label).set(0)
        metrics.ocsp_next_update.labels(target.label).set(0)
    tasks = [asyncio.create_task(CertificateWatch(t, publisher, metrics).run())
             for t in targets]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return 0


def distinct_targets(targets: list[OcspTarget]) -> list[OcspTarget]:
    """A certificate served on several listeners is one target (its file is named after the
    certificate); distinct certificates whose files share a name (two listeners' own
    fullchain.pem) get `cert` labels that tell them apart, or their gauges would overwrite
    each other's."""
    unique = list({t.file_name: t for t in targets}.values())
    labels = cert_labels(t.cert_path or t.label for t in unique)
    return [dataclasses.replace(t, label=labels[t.cert_path or t.label]) for t in unique]


def fetcher_main(targets: list[OcspTarget], directory: str, metrics: Metrics) -> int:
    """Entry point in the forked child."""
    unique = distinct_targets(targets)
    log.info("OCSP fetcher started", certificates=[t.label for t in unique])
    return asyncio.run(_watch_all(unique, directory, metrics))


class OcspRuntime:
    """The master's share: the private directory the fetcher and the workers share."""

    def __init__(self) -> None:
        self.directory: str | None = None

    def ensure_directory(self) -> str:
        if self.directory is None:
            # RUNTIME_DIRECTORY: systemd's RuntimeDirectory= (the first, when several are
            # listed: it joins them with ':'), else the system's temp dir.
            runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
            self.directory = tempfile.mkdtemp(prefix="qtls-ocsp-", dir=runtime or None)
        return self.directory

    def remove(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
