"""Example firmware-update (OTA) backend that qproxy fronts in the examples and tests."""

from .app import HeaderPreservingRequestHandler, create_app

__all__ = ["HeaderPreservingRequestHandler", "create_app"]
