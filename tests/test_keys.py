"""PKCS#11 URIs and the generated OpenSSL provider configuration, without a token."""

from __future__ import annotations

import base64
import os

import pytest

from qproxy.config.model import HsmSection, OpensslSection, ProviderSpec
from qproxy.errors import ConfigError
from qproxy.keys import provider, uri


def test_parse_uri_with_percent_encoding_and_id():
    parsed = uri.parse("pkcs11:token=qtls%20server;object=server-key;id=%01%ff;type=private")
    assert parsed.token == "qtls server" and parsed.object == "server-key"
    assert parsed.id == b"\x01\xff" and parsed.type == "private"
    assert uri.parse(str(parsed)) == parsed


@pytest.mark.parametrize("bad,message", [
    ("pkcs11:token=t;object=k?pin-value=1234", "PIN"),
    ("pkcs11:token=t;objekt=k", "unknown or malformed"),
    ("pkcs11:token=t", "names no key"),
    ("pkcs11:object=k;type=secret", "not a PKCS#11 object type"),
    ("file:/etc/key.pem", "not a pkcs11: URI"),
])
def test_bad_uris_say_what_is_wrong(bad, message):
    with pytest.raises(uri.UriError, match=message):
        uri.parse(bad)


def test_pem_uri_is_the_provider_der_structure():
    pem = provider.pem_uri("pkcs11:token=t;object=k;type=private").decode()
    assert pem.startswith("-----BEGIN PKCS#11 PROVIDER URI-----\n")
    der = base64.b64decode("".join(pem.splitlines()[1:-1]))
    desc = b"PKCS#11 Provider URI v1.0"
    assert der[0] == 0x30 and der[2] == 0x1A and der[3] == len(desc)
    assert der[4:4 + len(desc)] == desc
    assert der[4 + len(desc)] == 0x0C
    assert der.endswith(b"pkcs11:token=t;object=k;type=private")


def test_pem_uri_long_uri_uses_long_form_length():
    long_uri = "pkcs11:object=" + "k" * 300
    der = base64.b64decode("".join(provider.pem_uri(long_uri).decode().splitlines()[1:-1]))
    assert der[1] == 0x82 and int.from_bytes(der[2:4], "big") == len(der) - 4


def test_openssl_config_keeps_default_and_loads_pkcs11_late():
    hsm = HsmSection(enabled=True, pkcs11_library="/lib/vendor.so", session_pool_size=4)
    text = provider.openssl_config(hsm, OpensslSection(providers=(
        ProviderSpec(name="oqsprovider", module="/x/oqs.so", settings={"a": "b"}),)),
        "/proc/self/fd/9", "/usr/lib/ossl-modules/pkcs11.so")
    assert "default = default_sect" in text and "[default_sect]\nactivate = 1" in text
    assert "pkcs11-module-path = /lib/vendor.so" in text
    assert "pkcs11-module-load-behavior = late" in text
    assert "pkcs11-module-token-pin = file:/proc/self/fd/9" in text
    assert "pkcs11-module-cache-sessions = 4" in text
    assert "[oqsprovider_sect]\nmodule = /x/oqs.so\na = b\nactivate = 1" in text


def test_pin_resolution_order(tmp_path):
    pin_file = tmp_path / "pin"
    pin_file.write_text("from-file\n")
    env = {"QTLS_HSM_PIN_FILE": str(pin_file), "QTLS_HSM_PIN": "from-env"}
    assert provider.resolve_pin(HsmSection(pin="inline"), env) == "inline"
    assert provider.resolve_pin(HsmSection(pin_file=str(pin_file)), {}) == "from-file"
    assert provider.resolve_pin(HsmSection(), env) == "from-file"
    assert provider.resolve_pin(HsmSection(), {"QTLS_HSM_PIN": "from-env"}) == "from-env"
    with pytest.raises(ConfigError, match="hsm.pin_file"):
        provider.resolve_pin(HsmSection(pin_file=str(tmp_path / "missing")), {})


def test_memory_file_is_readable_through_proc_and_not_on_disk():
    path = provider.memory_file("qtls-test", b"secret")
    assert path.startswith("/proc/self/fd/")
    with open(path, "rb") as handle:
        assert handle.read() == b"secret"
    assert "memfd:qtls-test" in os.readlink(path)
