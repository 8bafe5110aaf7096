"""``python -m examples.ota_device --server HOST:PORT --ca CA.pem --signer SIGNER.pub.pem --install DIR``

Prints one JSON report and exits 0 when the latest firmware is installed (or already
current); prints the reason and exits 1 when it is refused."""

from __future__ import annotations

import argparse
import sys

from .agent import Agent, UpdateRefused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.ota_device")
    parser.add_argument("--server", required=True, help="HOST:PORT of qtls-server")
    parser.add_argument("--server-name", help="TLS name to expect (default: HOST)")
    parser.add_argument("--ca", required=True, help="CA bundle (PEM) the server chains to")
    parser.add_argument("--signer", required=True, help="Trusted firmware signer: PEM public "
                        "key or certificate")
    parser.add_argument("--install", required=True, help="Directory to install images into")
    parser.add_argument("--current", help="Version installed now (skip if the same)")
    args = parser.parse_args(argv)
    host, _, port = args.server.rpartition(":")
    agent = Agent(host.strip("[]"), int(port), args.ca, args.signer, args.install,
                  server_name=args.server_name, current_version=args.current)
    try:
        report = agent.check_and_install()
    except UpdateRefused as exc:
        print(f"update refused: {exc}", file=sys.stderr)
        return 1
    print(report.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
