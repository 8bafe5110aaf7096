"""The shape of `server.json`: seed 004's sections plus `upstreams` and `routes`.

Every model forbids unknown keys (a misspelt key is an error, not a silent default) and is
frozen: a loaded configuration is a value that a reload replaces whole.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

# Seconds. Finite and at most ~11 days: an event loop's timer, a socket timeout and a TLS
# session lifetime all overflow somewhere past that.
PositiveFloat = Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)]
# Written into the generated OpenSSL config, one `key = value` per line: a line break would
# let a value start a section of its own.
OneLine = Annotated[str, Field(pattern=r"^[^\r\n]*$")]
Port = Annotated[int, Field(ge=0, le=65535)]


def check_host(value: str) -> str:
    """An IP address or a DNS name getaddrinfo() can be asked about. Without this a label past
    63 characters passed --test-config and then ended `qtls-server` with a UnicodeError
    traceback from the IDNA codec when it bound the socket (or a worker's connect)."""
    if not value:
        raise ValueError("the host is empty (give an address such as '127.0.0.1' or '::')")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if len(value) > 253 or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{value[:80]!r} is neither an IP address nor a host name")
    try:
        value.encode("idna")
    except UnicodeError:
        raise ValueError(f"{value[:80]!r} is neither an IP address nor a host name (each "
                         "dot-separated part is 1 to 63 characters)") from None
    return value


Host = Annotated[str, AfterValidator(check_host)]


def check_url_path(value: str) -> str:
    """A path sent on the wire or matched against request targets: it starts with '/' (a
    prefix without one matches no request target) and holds no whitespace or control
    character (a CR LF in a health-check path would write a header of its own)."""
    if not value.startswith("/"):
        raise ValueError(f"{value[:80]!r} must start with '/'")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{value[:80]!r} holds whitespace or a control character")
    return value


UrlPath = Annotated[str, AfterValidator(check_url_path)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ServerSection(Section):
    listen_address: Host = "0.0.0.0"
    listen_port: Port = 8443
    # The seed calls it worker_threads; both names mean worker processes. 0: one per CPU.
    workers: Annotated[int, Field(ge=0, le=1024)] = Field(
        default=0, validation_alias=AliasChoices("workers", "worker_threads")
    )
    max_connections: Annotated[int, Field(ge=1, le=10_000_000)] = 10000
    backlog: Annotated[int, Field(ge=1, le=65535)] = 511
    handshake_timeout: PositiveFloat = 10.0
    client_header_timeout: PositiveFloat = 30.0
    keepalive_timeout: PositiveFloat = 75.0
    # nginx's send_timeout and client_body_timeout: a client that stops taking the response,
    # or stops sending its body, for this long is cut off.
    send_timeout: PositiveFloat = 60.0
    client_body_timeout: PositiveFloat = 60.0
    shutdown_timeout: PositiveFloat = 30.0
    max_request_line: Annotated[int, Field(ge=256)] = 8190
    max_header_size: Annotated[int, Field(ge=256)] = 8190
    max_header_count: Annotated[int, Field(ge=1)] = 100
    # Request bodies are read whole before a backend is chosen (nginx's proxy_request_buffering
    # on): a client trickling its body holds no backend connection. Larger than
    # client_max_body_size: 413 (0: no limit). nginx's default of 1 MiB refuses ordinary
    # uploads; 1 GiB still bounds the disk one request can take. Up to client_body_buffer_size
    # is kept in memory, the rest in a nameless 0600 temp file in client_body_temp_path
    # (default: the system's temp directory).
    client_max_body_size: Annotated[int, Field(ge=0)] = 1 << 30
    client_body_buffer_size: Annotated[int, Field(ge=0)] = 16 * 1024
    client_body_temp_path: str | None = None


class TlsSection(Section):
    protocol_version: Literal["1.3", "1.2"] = "1.3"
    hybrid_mode: bool = True
    pqc_only: bool = False
    require_pq: bool = False
    session_timeout: Annotated[int, Field(ge=0, le=2**31 - 1)] = 3600
    # Sessions are resumed with stateless TLS 1.3 tickets; the size bounds the TLS 1.2
    # session-ID cache only.
    session_cache_size: Annotated[int, Field(ge=0)] = 10000
    session_tickets: bool = True
    alpn: tuple[str, ...] = ("http/1.1",)

    @field_validator("alpn")
    @classmethod
    def _http1_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Accepting "h2" and then speaking HTTP/1.1 anyway would be worse than refusing it.
        if value != ("http/1.1",):
            raise ValueError('only ["http/1.1"] is served (there is no HTTP/2 yet)')
        return value

    @model_validator(mode="after")
    def _modes_agree(self) -> "TlsSection":
        if self.pqc_only and self.protocol_version == "1.2":
            raise ValueError("pqc_only needs TLS 1.3: ML-KEM groups do not exist in TLS 1.2")
        return self


def check_ocsp_url(value: str) -> str:
    """OCSP goes over plain HTTP (RFC 6960 A.1): its answers are signed, and fetching them over
    TLS would need an OCSP check of its own."""
    if not value.startswith("http://") or len(value) <= len("http://"):
        raise ValueError(f"{value[:80]!r} must be an http:// URL (OCSP is plain HTTP)")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{value[:80]!r} holds whitespace or a control character")
    return value


OcspUrl = Annotated[str, AfterValidator(check_ocsp_url)]


class KeyPair(Section):
    cert: str
    key: str
    # A DER OCSP response to staple for this certificate instead of fetching one (nginx's
    # ssl_stapling_file); re-read and re-checked on every refresh, so a job may replace it.
    ocsp_response_file: str | None = None


class CertificatesSection(Section):
    server_cert: str | None = None
    server_key: str | None = None
    server_key_uri: str | None = None
    keypairs: tuple[KeyPair, ...] = ()
    sni: dict[str, tuple[KeyPair, ...]] = {}
    ca_bundle: str | None = None
    verify_client: bool | Literal["optional"] = False
    verify_depth: Annotated[int, Field(ge=0, le=100)] = 3
    # OCSP stapling. Off by default, as in nginx and HAProxy: on, the daemon makes outbound
    # HTTP requests to each certificate's CA, which a locked-down host may not allow.
    ocsp_stapling: bool = False
    ocsp_responder: OcspUrl | None = None
    ocsp_response_file: str | None = None  # for server_cert; keypairs/sni carry their own
    ocsp_refresh_margin: PositiveFloat = 3600.0
    ocsp_retry_interval: PositiveFloat = 60.0
    ocsp_timeout: Annotated[float, Field(gt=0, le=60, allow_inf_nan=False)] = 10.0

    @model_validator(mode="after")
    def _one_key_name(self) -> "CertificatesSection":
        if self.server_key and self.server_key_uri:
            raise ValueError("give server_key or server_key_uri, not both")
        if (self.server_cert is None) != (self.server_key is None and self.server_key_uri is None):
            raise ValueError("server_cert and server_key (or server_key_uri) go together")
        if not self.default_pairs():
            raise ValueError("no certificate: set server_cert + server_key, or keypairs")
        if self.verify_client and not self.ca_bundle:
            raise ValueError("verify_client needs ca_bundle: the CAs that sign client certificates")
        if self.ocsp_response_file and not self.server_cert:
            raise ValueError("ocsp_response_file belongs to server_cert; for keypairs and sni "
                             "give each pair its own ocsp_response_file")
        return self

    def default_pairs(self) -> tuple[KeyPair, ...]:
        """The seed's single pair first, then `keypairs`."""
        pairs = list(self.keypairs)
        if self.server_cert:
            key = self.server_key or self.server_key_uri
            assert key is not None
            pairs.insert(0, KeyPair(cert=self.server_cert, key=key,
                                    ocsp_response_file=self.ocsp_response_file))
        return tuple(pairs)


class HsmSection(Section):
    enabled: bool = False
    pkcs11_library: OneLine | None = None
    token_label: str | None = None
    pin: str | None = None
    pin_file: str | None = None
    # pkcs11-provider keeps a session per process and per operation; the pool bound of the
    # seed format is passed to it as its session cache size.
    session_pool_size: Annotated[int, Field(ge=1, le=100_000)] = 10
    provider_module: OneLine | None = None

    @model_validator(mode="after")
    def _library_when_enabled(self) -> "HsmSection":
        if self.enabled and not self.pkcs11_library:
            raise ValueError("pkcs11_library is required when enabled is true (the vendor's "
                             "PKCS#11 library, e.g. /usr/lib/libCryptoki2_64.so)")
        return self


class ProviderSpec(Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    module: OneLine | None = None
    activate: bool = True
    settings: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")], OneLine] = {}


class OpensslSection(Section):
    providers: tuple[ProviderSpec, ...] = ()


class AlgorithmsSection(Section):
    kem: tuple[str, ...] = ()
    signature: tuple[str, ...] = ()
    cipher: tuple[str, ...] = ()


class LoggingSection(Section):
    level: Literal["debug", "info", "warn", "warning", "error", "critical"] = "info"
    file: str | None = None
    max_size_mb: Annotated[int, Field(ge=0)] = 100
    max_files: Annotated[int, Field(ge=0)] = 10
    console: bool = True
    access_log: bool = True


class MetricsSection(Section):
    enabled: bool = True
    address: Host = "127.0.0.1"
    port: Port = 9091
    path: str = "/metrics"

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        # aiohttp reads {name} as a route variable and refuses other odd characters only when
        # the metrics process starts (which would then die and be restarted over and over).
        if not all(c.isalnum() or c in "/._~-" for c in value) or not value.isascii():
            raise ValueError("only letters, digits and / . _ ~ - (e.g. '/metrics')")
        return value


class FipsSection(Section):
    enabled: bool = False
    self_test_on_load: bool = True


class HealthCheck(Section):
    path: UrlPath = "/healthz"
    interval: PositiveFloat = 5.0
    timeout: PositiveFloat = 2.0


class UpstreamSection(Section):
    servers: Annotated[tuple[str, ...], Field(min_length=1)]
    connect_timeout: PositiveFloat = 5.0
    read_timeout: PositiveFloat = 60.0
    # How long a pooled keep-alive connection to the backend may sit unused.
    idle_timeout: PositiveFloat = 60.0
    keepalive: Annotated[int, Field(ge=0)] = 32
    max_fails: Annotated[int, Field(ge=1)] = 1
    fail_timeout: PositiveFloat = 10.0
    health_check: HealthCheck | None = None
    # nginx's proxy_buffer_size: a response head (status line and fields) past this is a 502
    # "upstream sent too big header", and nothing of it reaches the client.
    max_response_head_size: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 16 * 1024
    # nginx's proxy_buffers: response body held per connection for a client slower than the
    # backend; past it, reading from the backend pauses.
    response_buffer_size: Annotated[int, Field(ge=4096, le=64 * 1024 * 1024)] = 64 * 1024

    @field_validator("servers")
    @classmethod
    def _host_port(cls, servers: tuple[str, ...]) -> tuple[str, ...]:
        for server in servers:
            parse_host_port(server)
        return servers


class Route(Section):
    host: str | None = None
    path_prefix: UrlPath = "/"
    upstream: str
    # nginx's proxy_request_buffering: the request body is read whole (memory, then a temp
    # file) before a backend is involved, so a slow upload holds no backend connection.
    # false streams it as it arrives, for uploads that need that.
    request_buffering: bool = True


class ServerConfig(Section):
    server: ServerSection = ServerSection()
    tls: TlsSection = TlsSection()
    certificates: CertificatesSection
    hsm: HsmSection = HsmSection()
    openssl: OpensslSection = OpensslSection()
    algorithms: AlgorithmsSection = AlgorithmsSection()
    logging: LoggingSection = LoggingSection()
    metrics: MetricsSection = MetricsSection()
    fips: FipsSection = FipsSection()
    upstreams: Annotated[dict[str, UpstreamSection], Field(min_length=1)]
    routes: tuple[Route, ...] = ()

    @model_validator(mode="after")
    def _routes_name_upstreams(self) -> "ServerConfig":
        for index, route in enumerate(self.routes):
            if route.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams))
                raise ValueError(
                    f"routes[{index}].upstream: no upstream named {route.upstream!r} "
                    f"(known: {known})"
                )
        if not self.routes and len(self.upstreams) > 1:
            raise ValueError("routes: several upstreams need routes saying which path goes where")
        return self

    def effective_routes(self) -> tuple[Route, ...]:
        if self.routes:
            return self.routes
        return (Route(upstream=next(iter(self.upstreams))),)


def parse_host_port(value: str) -> tuple[str, int]:
    """'127.0.0.1:5000', '[::1]:5000' or 'backend.local:80' -> (host, port)."""
    text = value.removeprefix("http://")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
    else:
        host, sep, rest = text.rpartition(":")
    if not sep or not host or not rest.isdigit() or not 0 < int(rest) < 65536:
        raise ValueError(f"{value!r} is not host:port (e.g. '127.0.0.1:5000' or '[::1]:5000')")
    check_host(host)
    return host, int(rest)
