"""A firmware-update agent for a device, built only on `qproxy.qtls` (see README.md)."""
