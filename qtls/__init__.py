"""`qtls`: the module name the Q-TLS Python bindings document uses (`from qtls import ...`).

An alias of `qproxy.qtls`, so that code written against the document runs unchanged."""

from qproxy.qtls import *  # noqa: F401,F403
from qproxy.qtls import __all__  # noqa: F401
