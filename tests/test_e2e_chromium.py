"""A real post-quantum browser: Debian's headless Chromium through qtls-server."""

from __future__ import annotations

import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by `make test`")
def test_chromium_loads_page_over_x25519mlkem768(server, tmp_path):
    url = f"https://localhost:{server.port}/echo?from=chromium"
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         # The development CA is private; the handshake itself is what is under test.
         "--ignore-certificate-errors", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert "/echo?from=chromium" in out.stdout, out.stderr[-2000:]
    access = server.wait_log(lambda e: e.get("event") == "request"
                             and e.get("path") == "/echo?from=chromium", timeout=30)
    assert access is not None
    assert access["ssl_curve"] == "X25519MLKEM768"
    assert access["tls_version"] == "TLSv1.3"
    # Chromium 156 accepts ML-DSA-65 signatures: it gets the post-quantum certificate.
    assert access["ssl_sigalg"] == "mldsa65"
