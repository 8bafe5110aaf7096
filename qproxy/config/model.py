"""The shape of `server.json`: seed 004's sections plus `upstreams` and `routes`.

Every model forbids unknown keys (a misspelt key is an error, not a silent default) and is
frozen: a loaded configuration is a value that a reload replaces whole.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from .access import ListenerAccess, RouteAccess

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


def check_name(value: str) -> str:
    """An upstream's name, an SNI name or a route's host: what routes and lookups compare
    against. Empty or blank, it is a typo that matched nothing (an SNI set never chosen) or
    something unintended (a route host "" matches only requests without a Host header)."""
    if not value.strip():
        raise ValueError("must not be empty" if not value else f"{value!r} is blank")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{value[:80]!r} holds whitespace or a control character")
    return value


Name = Annotated[str, AfterValidator(check_name)]


class AtPath(ValueError):
    """A problem found by a check over several keys, located at one of them: the loader
    reports it under `path` (relative to where the check runs), not at the section."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(problem)
        self.path = path


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def check_cidr(value: str) -> str:
    """'10.0.0.0/8', '2001:db8::/32' or one address; host bits past the prefix are refused
    ('10.0.0.1/8' is a typo for a host or a network, and we cannot tell which)."""
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value[:80]!r} is not an IPv4/IPv6 network: {exc}") from None
    return value


Cidr = Annotated[str, AfterValidator(check_cidr)]


class ProxyProtocolSection(Section):
    """`server.proxy_protocol`: read a PROXY header (HAProxy's PROXY protocol) from a load
    balancer before the TLS handshake. Off unless `accept` names a version."""

    accept: tuple[Literal["v1", "v2"], ...] = ()
    trusted: tuple[Cidr, ...] = ()
    timeout: PositiveFloat | None = None  # default: server.handshake_timeout

    @model_validator(mode="after")
    def _trusted_with_accept(self) -> "ProxyProtocolSection":
        if self.accept and not self.trusted:
            raise ValueError("trusted: accept needs the load balancers' networks (CIDRs) a "
                             "header is believed from, e.g. [\"10.0.0.0/8\"]")
        if self.trusted and not self.accept:
            raise ValueError('trusted without accept does nothing: add "accept": ["v2"]')
        return self


class SendProxyProtocolSection(Section):
    """`server.send_proxy_protocol`: a PROXY v2 header at the start of each backend
    connection, describing the client connection it serves (so it serves no other)."""

    version: Literal["v2"] = "v2"
    crc32c: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        return {"version": value} if isinstance(value, str) else value


ListenerName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)]


class ListenerSettings(Section):
    """What each listener has of its own: its socket, its timeouts and its request limits.
    `server` holds them for the default listener; each `listeners` entry for itself."""

    listen_address: Host = "0.0.0.0"
    listen_port: Port = 8443
    backlog: Annotated[int, Field(ge=1, le=65535)] = 511
    handshake_timeout: PositiveFloat = 10.0
    client_header_timeout: PositiveFloat = 30.0
    keepalive_timeout: PositiveFloat = 75.0
    # nginx's send_timeout and client_body_timeout: a client that stops taking the response,
    # or stops sending its body, for this long is cut off.
    send_timeout: PositiveFloat = 60.0
    client_body_timeout: PositiveFloat = 60.0
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
    # PROXY protocol in (from a load balancer) and out (to the backends); see their sections.
    proxy_protocol: ProxyProtocolSection = ProxyProtocolSection()
    send_proxy_protocol: SendProxyProtocolSection | None = None
    # Who may connect (config/access.py): per listener; the README's "Access control".
    access: ListenerAccess | None = None


class ServerSection(ListenerSettings):
    """The default listener's settings plus those of the whole process."""

    # The seed calls it worker_threads; both names mean worker processes. 0: one per CPU.
    workers: Annotated[int, Field(ge=0, le=1024)] = Field(
        default=0, validation_alias=AliasChoices("workers", "worker_threads")
    )
    max_connections: Annotated[int, Field(ge=1, le=10_000_000)] = 10000
    # The master's pid (written atomically, removed on a clean exit) and, next to it, its
    # status file: what `qproxy reload|stop|quit|reopen-logs|status` use without systemd.
    # The process's, not a listener's: `listeners[].pid_file` is an unknown key.
    pid_file: str | None = None
    # The drain of a worker generation (reload, stop), for every listener: in-flight HTTP
    # requests and open TCP sessions get this long before they are closed.
    shutdown_timeout: PositiveFloat = 30.0


MIN_TICKET_KEY_LIFETIME = 1.0


def _lifetime_off_or_above_floor(value: float) -> float:
    if 0 < value < MIN_TICKET_KEY_LIFETIME:
        raise ValueError(f"{value:g} s is below the floor of {MIN_TICKET_KEY_LIFETIME:g} s "
                         "(each rotation starts a new generation of workers); 0 turns "
                         "rotation off")
    return value


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
    # Seconds a generation's session-ticket keys are used before the master starts a new
    # generation with fresh keys (0: as long as the generation lives). Bounds how long a
    # recorded resumed session stays decryptable by whoever later steals a worker's memory.
    # A floor, because each rotation is a whole new generation of workers: below it the
    # master would do nothing but start generations back to back.
    ticket_key_lifetime: Annotated[float, Field(ge=0, le=1_000_000, allow_inf_nan=False),
                                   AfterValidator(_lifetime_off_or_above_floor)] = 43200
    # ALPN protocols selected from a client's offer, ours in order. Left out: the mode's own,
    # ["http/1.1"] for http and none for tcp (an MQTT client offering "mqtt" must not be told
    # "http/1.1"). An http listener serves ["http/1.1"] only (ServerConfig checks it).
    alpn: tuple[str, ...] | None = None

    @field_validator("alpn")
    @classmethod
    def _alpn_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for name in value or ():
            if not (0 < len(name) <= 255 and name.isascii() and name.isprintable()
                    and " " not in name):
                raise ValueError(f"{name[:60]!r} is not an ALPN protocol name (1 to 255 "
                                 "printable ASCII characters, no spaces)")
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
    sni: dict[Name, tuple[KeyPair, ...]] = {}
    ca_bundle: str | None = None
    verify_client: bool | Literal["optional"] = False
    verify_depth: Annotated[int, Field(ge=0, le=100)] = 3
    # Days before notAfter from which start, reload and --test-config warn.
    warn_days: Annotated[int, Field(ge=0, le=3650)] = 30
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
    # "console": structlog's human-readable lines; "json": one JSON object a line. Unset:
    # console when stderr is a terminal, JSON otherwise (journald, files, pipes).
    format: Literal["console", "json"] | None = None


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
    # FIPS-approved algorithms only, each checked by a known-answer test at start
    # (qproxy/tls/fips.py); not a validated module unless a validated "fips" provider is named.
    enabled: bool = False
    self_test_on_load: bool = True
    # X25519MLKEM768 in FIPS mode, on the strength of its approved ML-KEM half.
    allow_x25519_hybrid: bool = False

    @model_validator(mode="after")
    def _self_tests_stay_on(self) -> "FipsSection":
        if self.enabled and not self.self_test_on_load:
            raise ValueError("self_test_on_load cannot be false in FIPS mode: the known-answer "
                             "tests are part of what the mode is")
        return self


class HealthCheck(Section):
    path: UrlPath = "/healthz"
    interval: PositiveFloat = 5.0
    timeout: PositiveFloat = 2.0


def check_server(value: str) -> str:
    """Each server on its own, so that every wrong one is named (servers[2]) in one run."""
    parse_host_port(value)
    return value


def check_some_servers(servers: tuple[str, ...]) -> tuple[str, ...]:
    # Not Field(min_length=1): pydantic counts after dropping the wrong entries, and a list
    # whose only server is mistyped would also be reported as empty.
    if not servers:
        raise ValueError("needs at least 1 entry")
    return servers


class UpstreamSection(Section):
    servers: Annotated[tuple[Annotated[str, AfterValidator(check_server)], ...],
                       AfterValidator(check_some_servers)]
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


# Response header hygiene (issue 15): names are RFC 9110 tokens; values one line of visible
# ASCII; framing and hop-by-hop fields are qproxy's to write, never a route's.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_NOT_ADDABLE = frozenset({"connection", "content-length", "transfer-encoding", "keep-alive",
                          "upgrade", "te", "trailer", "proxy-connection", "date"})


def check_header_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError(f"{name[:80]!r} is not a header name (letters, digits and "
                         "!#$%&'*+.^_`|~- only)")
    return name


def check_added_header(name: str) -> str:
    check_header_name(name)
    if name.lower() in _NOT_ADDABLE:
        raise ValueError(f"{name!r} is written by qproxy itself and cannot be added")
    return name


def check_header_value(value: str) -> str:
    if not all(" " <= c <= "~" or c == "\t" for c in value):
        raise ValueError(f"{value[:80]!r}: a header value is one line of visible ASCII")
    return value.strip()


HeaderName = Annotated[str, AfterValidator(check_header_name)]


class HstsSection(Section):
    """Strict-Transport-Security (RFC 6797), as the hstspreload.org list wants it."""

    max_age: Annotated[int, Field(ge=0, le=2**31 - 1)] = 31_536_000
    include_subdomains: bool = False
    preload: bool = False

    @model_validator(mode="after")
    def _preloadable(self) -> "HstsSection":
        if self.preload and not (self.include_subdomains and self.max_age >= 31_536_000):
            raise ValueError("preload needs include_subdomains: true and max_age of at least "
                             "31536000 (one year), or browsers' preload lists refuse the site")
        return self

    def value(self) -> str:
        return (f"max-age={self.max_age}" + ("; includeSubDomains" if self.include_subdomains
                                             else "") + ("; preload" if self.preload else ""))


class Route(Section):
    host: Name | None = None
    path_prefix: UrlPath = "/"
    upstream: str
    # nginx's proxy_request_buffering: the request body is read whole (memory, then a temp
    # file) before a backend is involved, so a slow upload holds no backend connection.
    # false streams it as it arrives, for uploads that need that.
    request_buffering: bool = True
    # Who may use this route, checked after routing (config/access.py).
    access: RouteAccess | None = None
    # The backend's Server and X-Powered-By (and the ASP.NET version fields) say what runs
    # behind us and are not passed on unless named here (nginx's proxy_pass_header);
    # hide_headers drops more (proxy_hide_header).
    pass_headers: tuple[HeaderName, ...] = ()
    hide_headers: tuple[HeaderName, ...] = ()
    # Fields added to responses (replacing the backend's of the same name): on 2xx/3xx
    # answers as nginx's add_header, on every status with add_headers_always.
    add_headers: dict[Annotated[str, AfterValidator(check_added_header)],
                      Annotated[str, AfterValidator(check_header_value)]] = {}
    add_headers_always: bool = False
    hsts: HstsSection | None = None

    @model_validator(mode="after")
    def _one_hsts(self) -> "Route":
        if self.hsts is not None and any(n.lower() == "strict-transport-security"
                                         for n in self.add_headers):
            raise ValueError("give hsts or add_headers' Strict-Transport-Security, not both")
        return self


class ListenerSection(ListenerSettings):
    """One more door (issue 14): its own socket, TLS policy, certificates and mode. What it
    leaves out comes from the top level (`tls`, `certificates`, `routes`)."""

    name: ListenerName
    mode: Literal["http", "tcp"] = "http"
    # No default port: two listeners on 8443 would be an error the operator did not write.
    listen_port: Port
    tls: TlsSection | None = None
    certificates: CertificatesSection | None = None
    # tcp mode: every connection is relayed, after the handshake, to this upstream.
    upstream: str | None = None
    # http mode: this listener's routes (default: the top-level `routes`).
    routes: tuple[Route, ...] | None = None
    # tcp mode: a session in which no byte crossed either way for this long is closed
    # (MQTT keeps connections for hours, with keep-alive pings well inside this).
    idle_timeout: PositiveFloat = 600.0

    @model_validator(mode="after")
    def _mode_keys(self) -> "ListenerSection":
        if self.mode == "tcp":
            if self.upstream is None:
                raise AtPath("upstream", "tcp mode needs upstream: the name of a top-level upstream "
                                 "its connections are relayed to")
            if self.routes is not None:
                raise AtPath("routes", "routes are for mode http; a tcp listener relays everything "
                                 "to its upstream")
        else:
            if self.upstream is not None:
                raise AtPath("upstream", "upstream is for mode tcp; an http listener chooses upstreams "
                                 "through routes")
            if "idle_timeout" in self.model_fields_set:
                raise AtPath("idle_timeout", "idle_timeout is for mode tcp (http: keepalive_timeout)")
        return self


DEFAULT_LISTENER = "default"
HTTP1 = "http/1.1"


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
    upstreams: Annotated[dict[Name, UpstreamSection], Field(min_length=1)]
    routes: tuple[Route, ...] = ()
    listeners: tuple[ListenerSection, ...] = ()

    @model_validator(mode="after")
    def _routes_name_upstreams(self) -> "ServerConfig":
        for problem in upstream_references(self.model_dump(include={"upstreams", "routes",
                                                                    "listeners"})):
            raise problem
        if not self.routes and len(self.http_upstreams()) > 1:
            raise AtPath("routes", "several upstreams need routes saying which path goes where")
        if not self.routes and not self.http_upstreams():
            raise AtPath("routes", "every upstream is a tcp listener's; the default (http) "
                             "listener needs routes naming one")
        self._listeners_distinct()
        self._http_alpn()
        self._clients_are_verified()
        return self

    def _http_alpn(self) -> None:
        # Accepting "h2" and then speaking HTTP/1.1 anyway would be worse than refusing it.
        doors = [("tls", self.tls)] + [(f"listeners[{i}].tls", l.tls)
                                       for i, l in enumerate(self.listeners)
                                       if l.mode == "http" and l.tls is not None]
        for path, tls in doors:
            if tls.alpn is not None and tls.alpn != (HTTP1,):
                raise AtPath(f"{path}.alpn", 'only ["http/1.1"] is served on an http listener '
                             "(there is no HTTP/2 yet); other protocols are for tcp listeners")

    def _clients_are_verified(self) -> None:
        """A clients allow-list only sees verified certificates: on a listener that does not
        ask for them (verify_client false) no client would ever pass it."""
        doors = [("server.", "", self.certificates, self.server.access, self.routes)] + [
            (f"listeners[{i}].", f"listeners[{i}].", l.certificates or self.certificates,
             l.access, l.routes or ()) for i, l in enumerate(self.listeners)]
        for access_at, routes_at, certificates, access, routes in doors:
            if certificates.verify_client:
                continue
            scopes = [(f"{access_at}access.clients", access)] + [
                (f"{routes_at}routes[{i}].access.clients", route.access)
                for i, route in enumerate(routes)]
            for path, scope in scopes:
                if scope is not None and scope.clients is not None:
                    raise AtPath(path, "needs certificates.verify_client true or \"optional\" "
                                 "(client certificates are not asked for, so every client "
                                 "would be refused)")

    def _listeners_distinct(self) -> None:
        for problem in listener_clashes(self.model_dump(include={"server", "listeners"})):
            raise problem

    def http_upstreams(self) -> list[str]:
        """Upstreams the default routes may name: those no tcp listener relays to."""
        tcp = {l.upstream for l in self.listeners if l.mode == "tcp"}
        return [name for name in self.upstreams if name not in tcp]

    def effective_routes(self) -> tuple[Route, ...]:
        if self.routes:
            return self.routes
        return (Route(upstream=self.http_upstreams()[0]),)


def _covers(one: str, other: str) -> bool:
    """Whether listening on `one` and on `other` (as _address_key gives them) with one port
    would collide: either is a wildcard of the other's family ("::" is dual-stack, as
    master.bind_listeners binds it alone, so it covers IPv4 too). Names are left to bind."""
    try:
        a, b = ipaddress.ip_address(one), ipaddress.ip_address(other)
    except ValueError:
        return False
    for wild, addr in ((a, b), (b, a)):
        if wild.is_unspecified and (wild.version == 6 or addr.version == 4):
            return True
    return False


def upstream_references(document: object) -> list[AtPath]:
    """Every listener upstream and route upstream that names no key of `upstreams`, with the
    closest one. Reads plain JSON data, so that the loader lists these in the same run as a
    document's other problems (the model's own check runs only once every field is valid)."""
    if not isinstance(document, dict) or not isinstance(document.get("upstreams"), dict):
        return []
    names = [str(name) for name in document["upstreams"]]
    known = ", ".join(sorted(names))
    listeners = document.get("listeners")
    listeners = listeners if isinstance(listeners, (list, tuple)) else []
    references = []
    for index, listener in enumerate(listeners):
        if isinstance(listener, dict):
            references.append((f"listeners[{index}].upstream", listener.get("upstream")))
    for prefix, routes in [("", document.get("routes"))] + [
            (f"listeners[{i}].", l.get("routes")) for i, l in enumerate(listeners)
            if isinstance(l, dict)]:
        for index, route in enumerate(routes if isinstance(routes, (list, tuple)) else []):
            if isinstance(route, dict):
                references.append((f"{prefix}routes[{index}].upstream", route.get("upstream")))
    problems = []
    for path, name in references:
        if isinstance(name, str) and name not in names:
            match = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {match[0]!r}?" if match else ""
            problems.append(AtPath(path, f"no upstream named {name!r} (known: {known}){hint}"))
    return problems


def listener_clashes(document: object) -> list[AtPath]:
    """Every listener whose name or address another one has already. Plain JSON data, for
    the same reason as upstream_references: listed with a document's other problems."""
    if not isinstance(document, dict):
        return []
    server = document.get("server")
    server = server if isinstance(server, dict) else {}
    address = server.get("listen_address", "0.0.0.0")
    port = server.get("listen_port", 8443)
    names: dict[str, str] = {DEFAULT_LISTENER: "server"}
    bound: dict[tuple[str, int], str] = {}
    if isinstance(address, str) and isinstance(port, int):
        bound[(_address_key(address), port)] = "server"
    listeners = document.get("listeners")
    problems = []
    for index, listener in enumerate(listeners if isinstance(listeners, (list, tuple)) else []):
        if not isinstance(listener, dict):
            continue
        path = f"listeners[{index}]"
        name = listener.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append(AtPath(f"{path}.name", f"{name!r} is taken (by {names[name]}); "
                                       "each listener needs its own name"))
            else:
                names[name] = path
        address = listener.get("listen_address", "0.0.0.0")
        port = listener.get("listen_port")
        if not isinstance(address, str) or not isinstance(port, int) or isinstance(port, bool):
            continue
        key = (_address_key(address), port)
        if port != 0 and key in bound:
            problems.append(AtPath(f"{path}.listen_port", f"{address}:{port} is already "
                                   f"{bound[key]}'s address"))
            continue
        # A wildcard takes the port on every address it covers: the second bind would fail
        # at start (after --test-config said yes) or fail the reload.
        overlap = next((f"{owner}'s {other}:{port}" for (other, other_port), owner
                        in bound.items() if port != 0 and other_port == port
                        and _covers(other, key[0])), None)
        if overlap is not None:
            problems.append(AtPath(f"{path}.listen_address", f"{address}:{port} overlaps "
                                   f"{overlap} (a wildcard address holds the port on every "
                                   "address it covers)"))
            continue
        bound.setdefault(key, path)
    return problems


def _address_key(address: str) -> str:
    """'::0' and '::' (and '0:0::0') are one address; names are compared as written."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address.lower()


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
