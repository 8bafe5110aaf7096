"""What the OpenSSL in use can do, asked of OpenSSL itself (for `qtls-server --version`).

Each candidate name is set alone on a throw-away context: OpenSSL refuses a name it does not
implement, so the lists printed are what this build really has, not what qproxy hopes for.
"""

from __future__ import annotations

from OpenSSL import SSL

from . import openssl_ext
from .policy import HYBRID_GROUPS, PURE_PQ_GROUPS

# Names OpenSSL 3.5+ may implement; the probe keeps those this build accepts.
PQ_GROUP_CANDIDATES = (*HYBRID_GROUPS.values(), "curveSM2MLKEM768", "MLKEM512",
                       *PURE_PQ_GROUPS)
PQ_SIGALG_CANDIDATES = ("mldsa44", "mldsa65", "mldsa87")


def _accepted(names: tuple[str, ...], setter) -> list[str]:
    out = []
    for name in names:
        ctx = SSL.Context(SSL.TLS_METHOD)
        try:
            setter(ctx, name)
        except openssl_ext.OpenSSLCallError:
            continue
        out.append(name)
    return out


def pq_groups() -> list[str]:
    return _accepted(PQ_GROUP_CANDIDATES, openssl_ext.set_groups)


def pq_sigalgs() -> list[str]:
    return _accepted(PQ_SIGALG_CANDIDATES, openssl_ext.set_sigalgs)
