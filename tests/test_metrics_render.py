"""/metrics while other processes create and delete their value files."""

from __future__ import annotations

import subprocess
import sys

from tests.support.harness import ROOT, child_env

SCRIPT = r"""
import os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import Gauge, CollectorRegistry
Gauge("qtls_x", "x", ["cert"], registry=CollectorRegistry(),
      multiprocess_mode="livemax").labels("a").set(1)
# A process that has just created its file and not yet sized it.
open(os.path.join(sys.argv[1], "gauge_livemax_999999.db"), "ab").close()
from qproxy.observability.metrics import render_multiprocess
sys.stdout.write(render_multiprocess().decode())
"""


def test_an_empty_value_file_of_a_starting_process_does_not_fail_the_scrape(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, env=child_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'qtls_x{cert="a"} 1.0' in done.stdout
