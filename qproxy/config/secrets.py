"""Which configuration values are secrets, for every place that prints a configuration value
(`qtls-server -T`, the problems `--test-config` and a reload list).

A secret is a value under a key named like one (`pin`, `password`, `passphrase`, `secret`,
`token_pin`, ...: `hsm.pin`, a provider setting `pkcs11-module-token-pin`) or a PIN inside a
`pkcs11:` URI (`pin-value=`). Paths to files holding secrets (`pin_file`, key files) are not
secrets and are shown.
"""

from __future__ import annotations

import re

MASK = "********"
_SECRET_KEY = re.compile(r"(^|[-_.])(pin|password|passwd|passphrase|secret)($|[-_.])", re.I)
_PATH_KEY = re.compile(r"(^|[-_.])(file|path)$", re.I)
_URI_PIN = re.compile(r"(pin-value=)[^;?&]*", re.I)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key)) and not _PATH_KEY.search(key)


def mask_uri_pins(text: str) -> str:
    """'pkcs11:token=t?pin-value=1234' -> 'pkcs11:token=t?pin-value=********'."""
    return _URI_PIN.sub(lambda m: m.group(1) + MASK, text)
