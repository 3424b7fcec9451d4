"""A real OpenSSH server on 127.0.0.1 and a loopback robot profile pointing at it.

The server runs from throwaway host and user keys in a temporary folder, on a free port, as the user
running the tests (so the "robot" folder is a temporary directory on this machine). `.ci/run` installs
openssh-server and rsync when missing; without them these tests skip and say so.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

from onboard.profile import ROBOTS_DIR, DeploySettings, load_profile

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """(port, folder with the keys) of a running sshd that accepts only the test user key."""
    missing = [tool for tool, path in (("sshd", SSHD), ("rsync", shutil.which("rsync"))) if path is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: apt-get install openssh-server rsync (.ci/run does)")
    folder = tmp_path_factory.mktemp("sshd")
    host_key = folder / "host_ed25519"
    host_pub = _keygen(host_key)
    user_pub = _keygen(folder / "user_ed25519")
    (folder / "authorized_keys").write_text(user_pub + "\n")
    port = _free_port()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_pub.split()[:2])}\n")
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {folder / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nMaxStartups 50\nMaxSessions 50\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # the privilege separation folder sshd needs as root
    log = open(folder / "sshd.log", "w")
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stderr=log)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {(folder / 'sshd.log').read_text()}") from None
            time.sleep(0.05)
    yield port, folder
    server.terminate()
    server.wait(timeout=5)


@pytest.fixture(scope="session")
def shared_venvs(tmp_path_factory):
    """One venvs folder for the test robots of every run, kept as a robot keeps its venvs across deploys: the
    onboard venv (about 30 s) is built by the first test that needs it, in whichever xdist worker; the others
    wait for it (`ensure_venv` locks it) and later runs reuse it, until the requirements change."""
    base = tmp_path_factory.getbasetemp()  # pytest-of-<user>/pytest-<n>[/popen-gw<k> in an xdist worker]
    venvs = (base.parent.parent if os.environ.get("PYTEST_XDIST_WORKER") else base.parent) / "mpq-test-venvs"
    venvs.mkdir(exist_ok=True)
    return venvs


@pytest.fixture
def loopback(sshd, shared_venvs, tmp_path):
    """write(**overrides) -> path of a profile: robots/loopback.toml with this server's port and keys."""
    port, keys = sshd

    def write(**overrides) -> Path:
        data = tomllib.loads((ROBOTS_DIR / "loopback.toml").read_text())
        data["deploy"].update(
            ssh_port=port,
            identity_file=str(keys / "user_ed25519"),
            known_hosts_file=str(keys / "known_hosts"),
            remote_dir=str(tmp_path / "robot"),
            venv_dir=str(shared_venvs),
            python=str(Path(sys.base_prefix) / "bin" / "python3"),  # a python with venv, like a robot's
        )
        deploy_settings = {f.name for f in dataclasses.fields(DeploySettings)}
        for key, value in overrides.items():  # [deploy]'s settings into its section
            (data["deploy"] if key in deploy_settings else data)[key] = value
        path = tmp_path / "robots" / "loopback.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(tomli_w.dumps(data))
        load_profile(str(path))  # a broken override fails here, not deep in a deploy
        return path

    return write
