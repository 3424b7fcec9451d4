"""The robot's service: the pidfile supervisor behaves as the systemd unit says (restart on failure only,
SIGTERM then SIGKILL after the stop timeout), and release/service code needs nothing but the stdlib."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onboard.profile import ROOT
from onboard.service import START_LIMIT, ServiceSpec, Supervisor, unit_text, wait_healthy


def supervisor(tmp_path: Path, script: str, stop_timeout: float = 30.0) -> Supervisor:
    """A supervisor whose 'runtime' is a small python script, in a remote_dir under tmp_path."""
    (tmp_path / "current").mkdir()
    (tmp_path / "runtime.py").write_text(script)
    spec = ServiceSpec(
        robot="test",
        command=[sys.executable, str(tmp_path / "runtime.py")],
        remote_dir=str(tmp_path),
        kind="supervisor",
        stop_timeout=stop_timeout,
    )
    spec.save()
    return Supervisor(spec)


def wait_until(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_a_failed_run_is_restarted_and_a_clean_exit_is_not(tmp_path):
    counter = tmp_path / "starts"
    service = supervisor(
        tmp_path,
        f"import pathlib, sys\np = pathlib.Path({str(counter)!r})\nn = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\nsys.exit(1 if n == 1 else 0)\n",  # fails once, then finishes cleanly
    )
    service.start()
    wait_until(lambda: counter.exists() and counter.read_text() == "2" and not service.status().running)
    status = service.status()
    assert status.line.startswith("exited") and "last exit 0" in status.line and not status.failed
    assert not Path(service.pidfile).exists()  # the supervisor is gone: an exit 0 is not restarted
    assert counter.read_text() == "2"


def test_stop_sends_sigterm_then_sigkill_after_the_stop_timeout(tmp_path):
    marker = tmp_path / "got-sigterm"
    service = supervisor(
        tmp_path,
        "import pathlib, signal, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: pathlib.Path({str(marker)!r}).write_text('1'))\n"
        "while True:\n    time.sleep(0.05)\n",  # ignores SIGTERM (a hung runtime)
        stop_timeout=1.0,
    )
    status = service.start()
    assert status.running and wait_healthy(service, settle=0.5).running
    started = time.monotonic()
    status = service.stop()
    assert marker.exists()  # the runtime was asked first
    assert not status.running and "stopped" in status.line
    assert time.monotonic() - started >= 1.0  # and killed only after the stop timeout
    assert not Path(service.pidfile).exists()


def test_a_crash_looping_runtime_is_reported_failed_and_given_up_after_its_start_limit(tmp_path):
    service = supervisor(tmp_path, "import sys\nsys.exit(3)\n")
    service.start()
    status = wait_healthy(service, settle=3.0)
    assert status.failed and "last exit 3" in status.line  # reported while it is still being restarted
    # then, as systemd's StartLimitBurst: 5 failed starts within 60 s and the supervisor gives up
    status = wait_until(lambda: (s := service.status()).line.startswith("failed") and s, timeout=60)
    assert not status.running and status.failed and "last exit 3" in status.line
    assert json.loads(service.statefile.read_text())["starts"] == START_LIMIT[0]
    assert not Path(service.pidfile).exists()


def test_systemd_unit_matches_the_supervisor():
    spec = ServiceSpec("jetson", [sys.executable, "-m", "onboard", "run"], "/opt/mpq")
    text = unit_text(spec)
    for line in (
        "Restart=on-failure",
        "TimeoutStopSec=30",
        "KillSignal=SIGTERM",
        "WorkingDirectory=/opt/mpq/current",
        f'ExecStart="{sys.executable}" "-m" "onboard" "run"',
        "StartLimitBurst=5",
    ):
        assert line in text.splitlines()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_unit_even_with_spaces_and_percent_signs_in_paths(tmp_path):
    folder = tmp_path / "mpq robot 100%"
    folder.mkdir()
    (folder / "python").symlink_to(sys.executable)
    spec = ServiceSpec("jetson", [str(folder / "python"), "-m", "onboard", "run"], str(folder))
    unit = tmp_path / "mpq-jetson.service"
    unit.write_text(unit_text(spec))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in out.stderr.splitlines() if "mpq-jetson.service" in line]
    assert problems == [], out.stderr


def test_release_and_service_need_only_the_standard_library():
    """They run under the robot's bare python before the venv exists: no site-packages (-S)."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); import onboard.release, onboard.service; print('ok')"
    out = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT)], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_a_big_log_is_rotated_at_start(tmp_path, monkeypatch):
    import onboard.service

    monkeypatch.setattr(onboard.service, "LOG_KEEP_BYTES", 100)
    service = supervisor(tmp_path, "print('hello from the runtime')\n")
    service.logfile.parent.mkdir(parents=True, exist_ok=True)
    service.logfile.write_text("old line\n" * 50)
    service.start()
    wait_until(lambda: not service.status().running)
    assert (service.logfile.parent / (service.logfile.name + ".1")).read_text().startswith("old line")
    assert "hello from the runtime" in service.logfile.read_text() and "old line" not in service.logfile.read_text()


def service_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onboard.service", *args], capture_output=True, text=True, cwd=ROOT)


def test_two_starts_at_once_leave_one_supervisor_and_one_runtime(tmp_path):
    """Two runtimes would record into one log folder: the starts take turns and the second finds the first running;
    a supervisor started by hand beside a running one sees its lock and leaves."""
    service = supervisor(tmp_path, "import time\ntime.sleep(60)\n")
    starts = [
        subprocess.Popen(
            [sys.executable, "-m", "onboard.service", "start", "--dir", str(tmp_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        for start in starts:
            assert start.wait(timeout=30) == 0, start.stderr.read()
        second = service_cli("supervise", "--dir", str(tmp_path))
        assert second.returncode == 0 and "another supervisor already runs this service" in second.stdout

        def count(pattern: str) -> int:
            return len(subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split())

        assert count(f"onboard.service supervise --dir {tmp_path}") == 1
        assert count(str(tmp_path / "runtime.py")) == 1 and service.status().running
    finally:
        service.stop()
    assert not service.status().running


def test_a_damaged_spec_or_a_missing_release_is_one_line(tmp_path):
    service = supervisor(tmp_path, "import time\ntime.sleep(60)\n")
    (tmp_path / "current").rmdir()  # as a rollback with nothing to go back to leaves it
    out = service_cli("start", "--dir", str(tmp_path))
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "no current release in" in out.stderr
    service.spec_path = tmp_path / "run" / "service-spec.json"
    service.spec_path.write_text('{"robot": "test"')
    out = service_cli("status", "--dir", str(tmp_path))
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "is damaged" in out.stderr
    spec = dict(robot="test", command=["python"], remote_dir=5)  # edited by hand: a number where a path goes
    service.spec_path.write_text(json.dumps(spec))
    out = service_cli("status", "--dir", str(tmp_path))
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "remote_dir of the wrong type" in out.stderr
    out = service_cli("status", "--dir", str(tmp_path / "run" / "service-spec.json"))  # a file, not remote_dir
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "give the robot's remote_dir" in out.stderr
