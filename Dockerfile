# qtls-server: hybrid post-quantum TLS 1.3 terminating reverse proxy (qproxy).
#
#   docker build -t qproxy/qtls-server:0.1.0 .
#
# Two stages on Debian 13 "trixie" slim: its main suite has Python 3.13 (pyproject needs
# >= 3.11) and pkcs11-provider, which qproxy loads into the OpenSSL bundled in the
# `cryptography` wheel for keys kept in an HSM. Every dependency pinned in pyproject.toml ships
# a manylinux wheel for CPython 3.13 on amd64 and arm64, so the builder needs no compiler.
# Runtime layout, volumes, probes and the Kubernetes manifests: deploy/README.md.

# ---- builder: a virtual environment with qproxy and its pinned dependencies -------------
FROM debian:trixie-slim AS builder

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/qproxy

WORKDIR /src
COPY pyproject.toml README.md ./
COPY qproxy/ qproxy/
COPY examples/ examples/
# --only-binary: a dependency without a wheel fails the build instead of compiling from
# source (qproxy itself is pure Python and is built from this directory). pip compiles the
# bytecode here, because the runtime filesystem is read-only. pip itself is not needed at
# run time.
RUN /opt/qproxy/bin/pip install --only-binary=:all: . \
 && /opt/qproxy/bin/qtls-server --help >/dev/null \
 && /opt/qproxy/bin/pip uninstall -y pip

# ---- runtime --------------------------------------------------------------------------
FROM debian:trixie-slim

LABEL org.opencontainers.image.title="qtls-server" \
      org.opencontainers.image.description="Hybrid post-quantum TLS 1.3 terminating reverse proxy (qproxy)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

ARG DEBIAN_FRONTEND=noninteractive
# python3: the interpreter the venv was created with (same base image, same path);
# pkcs11-provider: pkcs11.so in /usr/lib/<arch>/ossl-modules for hsm.enabled;
# ca-certificates: public roots for anything that verifies outward.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates pkcs11-provider \
 && rm -rf /var/lib/apt/lists/*

# A fixed, numeric non-root user, so that Kubernetes' runAsNonRoot can check it.
# /etc/qtls/secrets belongs to it: a fresh named volume mounted there (docker-compose.yml's
# dev-pki) takes this ownership, so the PKI init job running as qtls can write into it.
RUN groupadd --system --gid 10001 qtls \
 && useradd --system --uid 10001 --gid qtls --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin qtls \
 && install -d -o root -g qtls -m 0755 /etc/qtls /etc/qtls/config /etc/qtls/certs \
 && install -d -o qtls -g qtls -m 0700 /etc/qtls/secrets \
 && install -d -o qtls -g qtls -m 0750 /var/log/qtls

COPY --from=builder /opt/qproxy /opt/qproxy
# Listens on 0.0.0.0:8443, metrics and /healthz on 0.0.0.0:9091; certificates from
# /etc/qtls/certs, keys from /etc/qtls/secrets; upstream ota-backend:5000. Mount your own
# over /etc/qtls/config (Kubernetes: the qtls-config ConfigMap).
COPY deploy/container/server.json /etc/qtls/config/server.json

# The prometheus multiprocess directory is made under $TMPDIR: with a read-only root
# filesystem /tmp must be a tmpfs (compose) or an emptyDir (Kubernetes).
ENV PATH=/opt/qproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp

USER 10001:10001
WORKDIR /etc/qtls

# 8883: MQTT over post-quantum TLS, when server.json has a tcp listener on it (README
# "listeners"); the default configuration listens on 8443 only.
EXPOSE 8443 8883 9091
STOPSIGNAL SIGTERM
# The metrics process's /healthz (port 9091, any metrics.address: 0.0.0.0 includes the
# loopback). Plain HTTP, so no certificate verification to get wrong; see deploy/README.md.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9091/healthz', timeout=4).close()"]

# The master is PID 1: it handles SIGTERM/SIGHUP/SIGUSR1 itself and reaps every child
# (waitpid(-1)), so no init shim is needed.
ENTRYPOINT ["qtls-server"]
CMD ["--config", "/etc/qtls/config/server.json"]
