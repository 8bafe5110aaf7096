"""``python -m examples.ota_device --server HOST:PORT --ca CA.pem --signer SIGNER.pub.pem --install DIR``

Prints one JSON report and exits 0 when the latest firmware is installed (or already
current); prints the reason and exits 1 when it is refused.

With ``--mqtt HOST:PORT`` (qtls-server's MQTT door) it waits for ``ota/update/available``
instead and installs each announced version: one JSON report per line, refusals on stderr.
``--once`` exits 0 after the first install; ``--timeout`` stops after that many seconds (with
``--once``: exit 1 if something was refused, 2 if no announcement came)."""

from __future__ import annotations

import argparse
import sys

from .agent import Agent, UpdateRefused
from .watch import Outcome, UpdateWatcher


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _print(outcome: Outcome) -> None:
    if outcome.report is not None:
        print(outcome.report.to_json(), flush=True)
    else:
        print(f"update refused: {outcome.refused}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.ota_device")
    parser.add_argument("--server", required=True, type=_host_port,
                        help="HOST:PORT of qtls-server")
    parser.add_argument("--server-name", help="TLS name to expect (default: HOST)")
    parser.add_argument("--ca", required=True, help="CA bundle (PEM) the server chains to")
    parser.add_argument("--signer", required=True, help="Trusted firmware signer: PEM public "
                        "key or certificate")
    parser.add_argument("--install", required=True, help="Directory to install images into")
    parser.add_argument("--current", help="Version installed now (skip if the same)")
    parser.add_argument("--mqtt", type=_host_port, metavar="HOST:PORT",
                        help="Wait for announcements on qtls-server's MQTT door (e.g. "
                             "localhost:8883) instead of checking once")
    parser.add_argument("--once", action="store_true",
                        help="With --mqtt: exit after the first firmware installed")
    parser.add_argument("--timeout", type=float, help="With --mqtt: stop after this many "
                        "seconds (with --once: exit 1 if updates were refused, 2 if none came)")
    args = parser.parse_args(argv)
    host, port = args.server
    agent = Agent(host, port, args.ca, args.signer, args.install,
                  server_name=args.server_name, current_version=args.current)
    if args.mqtt is not None:
        return _watch(agent, args)
    try:
        report = agent.check_and_install()
    except UpdateRefused as exc:
        print(f"update refused: {exc}", file=sys.stderr)
        return 1
    print(report.to_json())
    return 0


def _watch(agent: Agent, args: argparse.Namespace) -> int:
    watcher = UpdateWatcher(agent, *args.mqtt)
    try:
        watcher.connect()
    except UpdateRefused as exc:
        print(f"update refused: {exc}", file=sys.stderr)
        return 1
    try:
        outcomes = watcher.run(_print, once=args.once, timeout=args.timeout)
    except KeyboardInterrupt:
        return 0
    finally:
        watcher.close()
    if not args.once or any(o.report and o.report.status == "installed" for o in outcomes):
        return 0
    if not outcomes:
        print("no announcement before the timeout", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
