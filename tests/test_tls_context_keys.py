"""Regression: an unreadable private key file is a ConfigError naming its JSON path."""

from __future__ import annotations

import pytest

from qproxy.config.model import KeyPair
from qproxy.errors import ConfigError
from qproxy.tls.context import load_pair


def test_junk_key_file_is_a_config_error_not_an_attribute_error(dev_pki, tmp_path):
    junk = tmp_path / "key.pem"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as info:
        load_pair(KeyPair(cert=str(dev_pki.mldsa_cert), key=str(junk)),
                  "certificates.keypairs[0]", [])
    assert info.value.path == "certificates.keypairs[0].key"
    assert "is not a usable PEM private key" in str(info.value)
