"""A Ray cluster on 127.0.0.1 for the tests of the paths past one machine (offboard/target_workers.py, fleet.py)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Token authentication, as Ray recommends, with this session's own token for the cluster and its clients. Ray reads
# these when it is imported, so they are set before any test imports it (a token file another Ray left in ~/.ray
# would otherwise be sent to a cluster that expects none, and refused).
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The address of a Ray cluster on 127.0.0.1 (4 logical CPUs: 2 collectors and 2 target workers), started here
    (`ray start --head`) and stopped after."""
    ray = pytest.importorskip("ray", reason="the cluster extra (Ray) is not installed")
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    start = [ray_cli, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=4"]
    start += ["--include-dashboard=false", "--disable-usage-stats", "--object-store-memory=100000000"]
    # In its own process group: stopped by signalling that group, not by `ray stop`, which stops every Ray on the
    # machine (another xdist worker's cluster, or a user's). Its workers end with its raylet.
    started = subprocess.Popen(
        [*start, f"--temp-dir={temp}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _, stderr = started.communicate(timeout=180)
    assert started.returncode == 0, stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for signum in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):  # the whole group is gone
                os.killpg(started.pid, signum)
                time.sleep(3)
        shutil.rmtree(temp, ignore_errors=True)
