# TEST-ONLY: with this directory on PYTHONPATH (and the repository root), every Python process
# of a test run, the daemon's included, gets `tests.support.http_contract` (see there). Delete
# with it once the HTTP branch is merged.
try:
    import tests.support.http_contract  # noqa: F401
except ImportError:
    pass
