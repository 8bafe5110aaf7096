"""Flask application: the firmware-update (OTA) HTTP API.

Plain HTTP on purpose: TLS (post-quantum or not) is terminated by qproxy in
front of it, which is why /api/echo exists -- it shows exactly what the
proxy forwarded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request, send_file, url_for
from werkzeug.exceptions import ClientDisconnected, HTTPException
from werkzeug.routing import Rule
from werkzeug.serving import WSGIRequestHandler

from .chunked import ChunkedBody
from .notify import UpdateNotifier
from .storage import (
    ChecksumMismatch,
    EmptyUpload,
    FirmwareExists,
    FirmwareInfo,
    FirmwareNotFound,
    FirmwareStore,
    InvalidChecksum,
    InvalidSignature,
    InvalidVersion,
    SIGNATURE_SIZES,
    StorageError,
    UploadInterrupted,
    copy_and_hash,
)

# WSGI flattens header names to HTTP_X_REAL_IP and drops names containing
# "_"; the echo endpoint wants them as the client (i.e. the proxy) sent
# them, so the dev-server handler below stashes the raw list here.
RAW_HEADERS_ENVIRON_KEY = "ota_backend.raw_headers"

_STATUS_FOR_ERROR: dict[type[StorageError], int] = {
    InvalidVersion: 400,
    InvalidChecksum: 400,
    InvalidSignature: 400,
    EmptyUpload: 400,
    UploadInterrupted: 400,
    FirmwareNotFound: 404,
    FirmwareExists: 409,
    ChecksumMismatch: 422,
}

bp = Blueprint("ota", __name__)


class HeaderPreservingRequestHandler(WSGIRequestHandler):
    """werkzeug dev-server handler that also exposes the request headers
    with their original spelling, order and duplicates."""

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        environ[RAW_HEADERS_ENVIRON_KEY] = list(self.headers.items())
        if environ.get("wsgi.input_terminated"):
            # werkzeug's own decoder over-reads the heap on a truncated chunk (see chunked.py).
            environ["wsgi.input"] = ChunkedBody(self.rfile)
        return environ


def create_app(
    storage_dir: str | os.PathLike[str] | None = None,
    config: Mapping[str, Any] | None = None,
    notifier: UpdateNotifier | None = None,
) -> Flask:
    """Build the app. ``storage_dir`` defaults to the OTA_STORAGE variable; ``notifier``
    (started by the caller) announces every upload over MQTT."""
    storage_dir = storage_dir or os.environ.get("OTA_STORAGE")
    if not storage_dir:
        raise ValueError("no firmware storage directory: pass storage_dir or set OTA_STORAGE")

    app = Flask(__name__)
    if config:
        app.config.update(config)
    app.extensions["ota_store"] = FirmwareStore(storage_dir)
    app.extensions["ota_notifier"] = notifier
    app.register_blueprint(bp)

    # A werkzeug Rule without methods matches every method (PURGE, PROPFIND,
    # ...); Flask's add_url_rule would silently restrict it to GET.
    app.url_map.add(Rule("/api/echo", endpoint="echo"))
    app.view_functions["echo"] = echo

    app.register_error_handler(StorageError, _storage_error)
    app.register_error_handler(ClientDisconnected, _client_disconnected)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _store() -> FirmwareStore:
    return current_app.extensions["ota_store"]


def _describe(info: FirmwareInfo) -> dict[str, Any]:
    described = {**info.to_dict(), "url": url_for("ota.download", version=info.version)}
    signature = _store().signature(info.version)
    if signature is not None:
        described["signature"] = {
            **signature.to_dict(),
            "url": url_for("ota.get_signature", version=info.version),
        }
    return described


# -- firmware API --------------------------------------------------------


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/api/firmware/latest")
def latest():
    info = _store().latest()
    if info is None:
        raise FirmwareNotFound("no firmware has been uploaded yet")
    return jsonify(_describe(info))


@bp.get("/api/firmware")
def list_firmware():
    return jsonify([_describe(info) for info in _store().versions()])


@bp.get("/api/firmware/<version>")
def metadata(version: str):
    return jsonify(_describe(_store().get(version)))


@bp.route("/api/firmware/<version>", methods=["PUT", "POST"])
def upload(version: str):
    # request.stream, never request.data: the body may be a 1 GiB image.
    # Chunked bodies work because werkzeug's dev server (and real WSGI
    # servers) set wsgi.input_terminated; without it the stream is empty
    # and save() answers 400 instead of storing an empty image.
    info = _store().save(
        version,
        request.stream,
        expected_sha256=request.headers.get("X-Firmware-SHA256"),
    )
    _announce(info)
    response = jsonify(_describe(info))
    response.status_code = 201
    response.headers["Location"] = url_for("ota.metadata", version=version)
    return response


def _announce(info: FirmwareInfo) -> None:
    notifier: UpdateNotifier | None = current_app.extensions["ota_notifier"]
    if notifier is None:
        return
    try:
        url = notifier.download_url(url_for("ota.download", version=info.version),
                                    request.host_url)
        latest = _store().latest()
        notifier.announce(info, url, latest=latest is not None and latest.version == info.version)
    except Exception:
        # The image is stored and its 201 is owed: a bug in announcing must not turn the
        # upload into a 500 the client would retry into a 409.
        current_app.logger.exception("announcing firmware %s failed", info.version)


@bp.get("/api/firmware/<version>/download")
def download(version: str):
    store = _store()
    info = store.get(version)
    # The SHA-256 doubles as a strong ETag: images are immutable per version.
    response = send_file(
        store.image_path(version),
        mimetype="application/octet-stream",
        as_attachment=True,
        download_name=f"firmware-{version}.bin",
        conditional=True,
        etag=info.sha256,
    )
    response.headers["X-Firmware-SHA256"] = info.sha256
    # make_conditional() adds a Date header and the server adds its own;
    # two Date headers confuse strict clients and proxies.
    response.headers.pop("Date", None)
    return response


@bp.get("/api/firmware/<version>/sha256")
def checksum(version: str):
    info = _store().get(version)
    return jsonify(version=info.version, sha256=info.sha256)


@bp.route("/api/firmware/<version>/signature", methods=["PUT", "POST"])
def put_signature(version: str):
    """Body: the raw detached signature (`qproxy firmware sign`); X-Signer-Key-Id: the key
    id it printed; X-Signature-Algorithm: ML-DSA-65 unless said otherwise."""
    # One byte more than the largest signature: enough to refuse anything bigger, and a
    # client cannot make us buffer more.
    body = request.stream.read(max(SIGNATURE_SIZES.values()) + 1)
    info = _store().save_signature(
        version, body,
        algorithm=request.headers.get("X-Signature-Algorithm", "ML-DSA-65"),
        key_id=request.headers.get("X-Signer-Key-Id", ""),
    )
    # Announced again: devices that install only signed images can act on it now.
    _announce(_store().get(version))
    response = jsonify(info.to_dict())
    response.status_code = 201
    return response


@bp.get("/api/firmware/<version>/signature")
def get_signature(version: str):
    store = _store()
    store.get(version)
    info = store.signature(version)
    if info is None:
        raise FirmwareNotFound(f"firmware version {version} is not signed")
    response = send_file(store.signature_path(version), mimetype="application/octet-stream",
                         as_attachment=True, download_name=f"firmware-{version}.bin.sig")
    response.headers["X-Signer-Key-Id"] = info.key_id
    response.headers["X-Signature-Algorithm"] = info.algorithm
    response.headers.pop("Date", None)
    return response


# -- diagnostics ---------------------------------------------------------


def echo():
    """Describe the request as received, for checking what a proxy forwards."""
    raw_headers = request.environ.get(RAW_HEADERS_ENVIRON_KEY)
    header_list = raw_headers if raw_headers is not None else list(request.headers.items())
    headers: dict[str, str] = {}
    for name, value in header_list:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    body_length, body_sha256 = copy_and_hash(request.stream)
    return jsonify(
        method=request.method,
        path=request.path,
        query_string=request.query_string.decode("latin-1"),
        request_uri=request.environ.get("REQUEST_URI"),
        http_version=request.environ.get("SERVER_PROTOCOL"),
        url_scheme=request.scheme,
        remote_addr=request.remote_addr,
        remote_port=request.environ.get("REMOTE_PORT"),
        headers=headers,
        header_list=[[name, value] for name, value in header_list],
        # False when not served by HeaderPreservingRequestHandler: names are
        # then WSGI's Title-Case reconstruction (X-Real-Ip, not X-Real-IP).
        headers_case_preserved=raw_headers is not None,
        body_length=body_length,
        body_sha256=body_sha256,
    )


# -- errors --------------------------------------------------------------


def _json_error(message: str, status: int):
    response = jsonify(error=message)
    response.status_code = status
    return response


def _storage_error(exc: StorageError):
    status = next(
        (code for cls, code in _STATUS_FOR_ERROR.items() if isinstance(exc, cls)),
        400,
    )
    return _json_error(str(exc), status)


def _client_disconnected(exc: ClientDisconnected):
    # werkzeug's generic text blames "the browser (or proxy)"; say what happened.
    return _json_error("request body ended before Content-Length bytes arrived", 400)


def _http_error(exc: HTTPException):
    # Start from werkzeug's response so headers such as Allow (405) or
    # Location (308) survive; only the HTML body is replaced.
    response = exc.get_response()
    response.set_data(current_app.json.dumps({"error": exc.description}))
    response.content_type = "application/json"
    return response


def _unexpected_error(exc: Exception):
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return _json_error("internal server error", 500)
