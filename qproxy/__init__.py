"""qproxy: a hybrid post-quantum TLS 1.3 terminating reverse proxy (the `qtls-server` daemon)."""

__version__ = "0.1.0"
