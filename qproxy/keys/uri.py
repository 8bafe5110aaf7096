"""PKCS#11 URIs (RFC 7512), the part qproxy uses: which token, which object."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

# Path attributes RFC 7512 defines; anything else in the path is a typo worth reporting.
_PATH_ATTRIBUTES = {"token", "manufacturer", "serial", "model", "library-manufacturer",
                    "library-description", "library-version", "slot-description",
                    "slot-manufacturer", "slot-id", "object", "type", "id"}


class UriError(ValueError):
    pass


@dataclass(frozen=True)
class Pkcs11Uri:
    token: str | None = None
    object: str | None = None
    id: bytes | None = None
    type: str | None = None
    serial: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.token is not None:
            parts.append("token=" + quote(self.token, safe=""))
        if self.serial is not None:
            parts.append("serial=" + quote(self.serial, safe=""))
        if self.object is not None:
            parts.append("object=" + quote(self.object, safe=""))
        if self.id is not None:
            parts.append("id=" + "".join(f"%{b:02x}" for b in self.id))
        if self.type is not None:
            parts.append("type=" + self.type)
        return "pkcs11:" + ";".join(parts)


def is_pkcs11_uri(value: str) -> bool:
    return value.startswith("pkcs11:")


def parse(value: str) -> Pkcs11Uri:
    if not is_pkcs11_uri(value):
        raise UriError(f"{value!r} is not a pkcs11: URI")
    path, _, query = value[len("pkcs11:"):].partition("?")
    if "pin-value" in query or "pin-source" in query:
        raise UriError("the URI carries a PIN; give it in hsm.pin_file or QTLS_HSM_PIN_FILE "
                       "instead, so it never appears in configuration or logs")
    fields: dict[str, str] = {}
    for part in filter(None, path.split(";")):
        name, sep, raw = part.partition("=")
        if not sep or name not in _PATH_ATTRIBUTES:
            raise UriError(f"unknown or malformed attribute {part!r} in PKCS#11 URI")
        fields[name] = raw
    kind = fields.get("type")
    if kind not in (None, "private", "public", "cert", "secret-key", "data"):
        raise UriError(f"type={kind} is not a PKCS#11 object type")
    if "object" not in fields and "id" not in fields:
        raise UriError("the URI names no key: add object=<label> or id=<hex>")
    return Pkcs11Uri(
        token=unquote(fields["token"]) if "token" in fields else None,
        object=unquote(fields["object"]) if "object" in fields else None,
        id=unquote(fields["id"], encoding="latin-1").encode("latin-1") if "id" in fields else None,
        type=kind,
        serial=unquote(fields["serial"]) if "serial" in fields else None,
    )
