"""Certificate expiry: the gauge, the start/reload warning and check-config's summary, with
certificates that expire in 1 day and in 1 year (issue 16, item 2)."""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.request
from pathlib import Path

from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec, mldsa

from qproxy import pki
from qproxy.cli import main
from qproxy.observability import cert_expiry
from tests.conftest import make_config

NOW = dt.datetime.now(dt.timezone.utc)


def mint(directory: Path, stem: str, key, days: int) -> tuple[Path, Path]:
    """A self-signed server certificate valid for `days` from now, and its key."""
    cert = pki.issue(stem, key.public_key(), pki._name(stem), key, ca=False,
                     server_names=("localhost", "127.0.0.1"), days=days)
    cert_path, key_path = directory / f"{stem}-cert.pem", directory / f"{stem}-key.pem"
    pki.write_certs(cert_path, cert)
    pki.write_key(key_path, key)
    return cert_path, key_path


def expiring_pairs(directory: Path) -> list[dict[str, str]]:
    """ECDSA P-384 expiring in 1 day, ML-DSA-65 in 1 year: one listener can hold both."""
    soon = mint(directory, "soon", ec.generate_private_key(ec.SECP384R1()), 1)
    later = mint(directory, "later", mldsa.MLDSA65PrivateKey.generate(), 365)
    return [{"cert": str(c), "key": str(k)} for c, k in (soon, later)]


class Pair:
    def __init__(self, cert_path: str, key_kind: str, days: float, json_path: str) -> None:
        self.cert_path, self.key_kind, self.json_path = cert_path, key_kind, json_path
        key = ec.generate_private_key(ec.SECP256R1())
        self.leaf = pki.issue("x", key.public_key(), pki._name("x"), key, ca=False, days=1)
        self._days = days

    @property
    def not_after(self) -> dt.datetime:
        return NOW + dt.timedelta(days=self._days)


def entries(*pairs: Pair) -> list[cert_expiry.CertificateExpiry]:
    return [cert_expiry.CertificateExpiry("default", cert_expiry.cert_label(p.cert_path),
                                          p.key_kind, "CN=x", p.not_after, p.json_path)
            for p in pairs]


# --- pure functions ------------------------------------------------------------------------

def test_label_is_the_file_name_not_the_path():
    assert cert_expiry.cert_label("/etc/qtls/certs/server-mldsa65-cert.pem") == \
        "server-mldsa65-cert.pem"


def test_warns_below_warn_days_and_not_above():
    found = entries(Pair("/a/soon.pem", "ECDSA P-384", 1.5, "certificates.keypairs[0]"),
                    Pair("/a/later.pem", "ML-DSA-65", 365, "certificates.keypairs[1]"))
    warnings = cert_expiry.expiry_warnings(found, warn_days=30, now=NOW)
    assert len(warnings) == 1
    assert warnings[0].startswith("certificates.keypairs[0].cert: certificate 'soon.pem'")
    assert "expires in 1 day(s)" in warnings[0]
    both = cert_expiry.expiry_warnings(found, warn_days=400, now=NOW)
    assert "'later.pem'" in both[1] and re.search(r"expires in 36[45] day\(s\)", both[1])
    assert cert_expiry.expiry_warnings(found, warn_days=0, now=NOW) == []


def test_last_day_is_told_in_hours():
    found = entries(Pair("/a/soon.pem", "ECDSA P-384", 0.5, "certificates.server_key"))
    (warning,) = cert_expiry.expiry_warnings(found, warn_days=30, now=NOW)
    assert warning.startswith("certificates.server_cert:")
    assert re.search(r"expires in 1[12] hour\(s\)", warning)


def test_expired_certificate_is_a_loud_warning_not_a_refusal():
    found = entries(Pair("/a/old.pem", "RSA-3072", -2, "certificates.keypairs[0]"))
    (warning,) = cert_expiry.expiry_warnings(found, warn_days=0, now=NOW)
    assert "EXPIRED" in warning and "still served" in warning


def test_one_entry_per_certificate_even_when_sni_repeats_it():
    pair = Pair("/a/c.pem", "ML-DSA-65", 10, "certificates.keypairs[0]")
    again = Pair("/a/c.pem", "ML-DSA-65", 10, "certificates.sni.x[0]")
    again.leaf = pair.leaf
    assert len(cert_expiry.expiry_of([pair, again])) == 1



def test_two_certificates_with_the_same_file_name_are_both_watched():
    """Let's Encrypt's layout: every name's chain is .../live/<name>/fullchain.pem. Two SNI
    certificates of one key type were one entry (keyed by label): the second one's expiry
    had no gauge and no warning at all."""
    a = Pair("/etc/le/live/a.example/fullchain.pem", "ECDSA P-256", 1, "certificates.sni.a[0]")
    b = Pair("/etc/le/live/b.example/fullchain.pem", "ECDSA P-256", 1, "certificates.sni.b[0]")
    found = cert_expiry.expiry_of([a, b])
    assert sorted(e.cert for e in found) == ["a.example/fullchain.pem",
                                             "b.example/fullchain.pem"]
    warnings = cert_expiry.expiry_warnings(found, warn_days=30)
    assert len(warnings) == 2 and "certificates.sni.b[0].cert" in warnings[1]


def test_labels_take_only_as_much_of_the_path_as_tells_files_apart():
    assert cert_expiry.cert_labels(["/x/a/c.pem", "/y/a/c.pem", "/y/d.pem", "/x/a/c.pem"]) == {
        "/x/a/c.pem": "x/a/c.pem", "/y/a/c.pem": "y/a/c.pem", "/y/d.pem": "d.pem"}

# --- check-config --------------------------------------------------------------------------

def test_check_config_prints_subject_key_type_and_expiry(tmp_path, dev_pki):
    config = make_config(dev_pki, "127.0.0.1:9", certificates={"keypairs": expiring_pairs(tmp_path)})
    path = tmp_path / "server.json"
    path.write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    soon = next(line for line in lines if line.startswith("certificate soon-cert.pem"))
    later = next(line for line in lines if line.startswith("certificate later-cert.pem"))
    assert "CN=soon" in soon and "key ECDSA P-384" in soon and "hour(s)" in soon
    assert "CN=later" in later and "key ML-DSA-65" in later and "in 364 day(s)" in later
    warning = next(line for line in lines if line.startswith("warning:"))
    assert "soon-cert.pem" in warning and "certificates.warn_days is 30" in warning
    assert not any("later-cert.pem" in line for line in lines if line.startswith("warning:"))


def test_warn_days_is_configurable(tmp_path, dev_pki):
    config = make_config(dev_pki, "127.0.0.1:9", certificates={
        "keypairs": expiring_pairs(tmp_path), "warn_days": 400})
    path = tmp_path / "server.json"
    path.write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 0, result.stderr
    assert len([l for l in result.stderr.splitlines() if l.startswith("warning:")]) == 2



def test_a_listeners_own_expiring_certificate_is_named_under_the_listener(tmp_path, dev_pki):
    """The warning named certificates.keypairs[0].cert, the top-level section, for a listener
    with its own certificates: the operator edits the wrong certificate."""
    config = make_config(dev_pki, "127.0.0.1:9", listeners=[{
        "name": "mqtt", "mode": "tcp", "listen_address": "127.0.0.1", "listen_port": 0,
        "upstream": "broker", "certificates": {"keypairs": expiring_pairs(tmp_path)}}])
    config["upstreams"]["broker"] = {"servers": ["127.0.0.1:9"]}
    path = tmp_path / "server.json"
    path.write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if line.startswith("warning:"))
    assert "warning: listeners[0].certificates.keypairs[0].cert: certificate 'soon-cert.pem'" \
        in warning, warning

# --- the daemon ----------------------------------------------------------------------------

def _metrics(server) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()


def _gauge(text: str, cert: str) -> float:
    match = re.search(r'^qtls_certificate_not_after_seconds\{([^}]*cert="' + re.escape(cert)
                      + r'"[^}]*)\} (\S+)$', text, flags=re.MULTILINE)
    assert match, f"no gauge for {cert}:\n{text}"
    return float(match.group(2))


def test_daemon_warns_at_start_and_exports_the_gauges(tmp_path, start_server, dev_pki, backend):
    config = make_config(dev_pki, backend["address"],
                         certificates={"keypairs": expiring_pairs(tmp_path)})
    server = start_server(config)
    warnings = [e["detail"] for e in server.events("configuration warning")]
    assert any("soon-cert.pem" in w and "expires in" in w for w in warnings), warnings
    assert not any("later-cert.pem" in w for w in warnings)
    text = _metrics(server)
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    assert 0 < _gauge(text, "soon-cert.pem") - now <= 86400
    assert 364 * 86400 < _gauge(text, "later-cert.pem") - now <= 365 * 86400
    assert 'listener="default"' in text and 'key_type="ECDSA P-384"' in text
    assert 'key_type="ML-DSA-65"' in text


def test_reload_warns_and_the_old_certificates_leave_the_gauge(tmp_path, start_server, dev_pki,
                                                              backend):
    import signal

    server = start_server(make_config(dev_pki, backend["address"]))
    assert "server-mldsa65-cert.pem" in _metrics(server)
    config = make_config(dev_pki, backend["address"],
                         certificates={"keypairs": expiring_pairs(tmp_path)})
    server.config_path.write_text(json.dumps(config))
    server.proc.send_signal(signal.SIGHUP)
    assert server.wait_log(lambda e: e.get("event") == "reloaded", 30)
    assert any("soon-cert.pem" in e["detail"] for e in server.events("configuration warning"))
    assert server.wait_log(lambda e: e.get("event") == "old worker finished", 30)
    # The master drops a dead worker's live gauges just after it logs the exit: poll, bounded.
    import time

    deadline = time.monotonic() + 10
    while "server-mldsa65-cert.pem" in (text := _metrics(server)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "soon-cert.pem" in text
    assert "server-mldsa65-cert.pem" not in text


def test_prepare_and_this_module_load_no_openssl_before_openssl_conf_is_set():
    """prepare() sets OPENSSL_CONF (HSM and FIPS providers) before OpenSSL initialises; a
    module-level cryptography import in cert_expiry broke every HSM start (the worker could not
    decode the key's pkcs11 URI: 'DECODER routines::unsupported')."""
    import subprocess
    import sys

    from tests.support.harness import ROOT, child_env

    code = ("import sys, qproxy.daemon.prepare, qproxy.observability.cert_expiry; "
            "print(sorted(m for m in ('cryptography', 'OpenSSL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
