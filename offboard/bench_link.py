"""`make bench`'s faulty-link rows: lockstep pendulum episodes through firmware_bridge.fault_proxy at 0.1 %,
1 % and 5 % byte faults against the same episodes on a clean link: episodes completed within a time budget,
their mean cost, and what the two ends did about the faults (commands sent again, repeats answered)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from firmware_bridge.fault_proxy import FaultProxy
from onboard.recorder import read_segment, verified_segments

RATES = (0.0, 0.001, 0.01, 0.05)


def faulty_episodes(rate: float, episodes: int, budget: float, tmp: Path) -> dict:
    """`onboard run` (lockstep, the sim profile's planner) through a FaultProxy at `rate`, stopped after `budget`."""
    applied_log = tmp / f"applied-{rate}.jsonl"
    standin = subprocess.Popen(
        [sys.executable, "-m", "firmware_bridge.standin", "--task", "pendulum", "--applied-log", str(applied_log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    logs = tmp / f"rate-{rate}"
    started = time.monotonic()
    try:
        port = json.loads(standin.stdout.readline())["port"]
        with FaultProxy(port, rate, seed=1) as proxy:
            profile = tmp / "robots" / f"faults-{rate}.toml"  # the sim profile's planner, on the proxy's port
            profile.parent.mkdir(parents=True, exist_ok=True)
            profile.write_text(f'name = "faults"\ntask = "pendulum"\nserial = "{proxy.port}"\nmode = "lockstep"\n')
            run = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "onboard",
                    "run",
                    "--robot",
                    str(profile),
                    "--episodes",
                    str(episodes),
                    "--quiet",
                    "--log-dir",
                    str(logs),
                    "--json",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                _, err = run.communicate(timeout=budget)
            except subprocess.TimeoutExpired:
                run.send_signal(signal.SIGTERM)  # the loop closes the episode under way and disarms
                _, err = run.communicate(timeout=30)
            counts = proxy.counts
    finally:
        standin.send_signal(signal.SIGTERM)
        standin.wait(timeout=10)
    seconds = time.monotonic() - started
    segments, _ = verified_segments(logs / "faults") if (logs / "faults").exists() else ([], [])
    summaries = [read_segment(s)[0]["summary"] for s in segments]
    applied = [json.loads(line) for line in applied_log.read_text().splitlines()] if applied_log.exists() else []
    by_seq = {a["seq"]: a["u"] for a in applied}
    transitions = [t for s in segments for t in read_segment(s)[1]["/transition"]]
    done = [s for s in summaries if not s.get("interrupted")]
    last = summaries[-1] if summaries else {}
    return dict(
        rate=rate,
        episodes_asked=episodes,
        episodes_completed=len(done),
        seconds=seconds,
        costs=[s["cost"] for s in done],
        mean_cost=float(np.mean([s["cost"] for s in done])) if done else None,
        commands_resent=last.get("link", {}).get("commands_resent"),
        requests_resent=last.get("link", {}).get("requests_resent"),
        plant_commands_repeated=last.get("plant", {}).get("commands_repeated"),
        faults_injected={d: {k: v for k, v in c.items() if k != "bytes"} for d, c in counts.items()},
        # every command applied once, in order; each recorded action the one applied; each applied one commanded
        applied_once=[a["seq"] for a in applied] == sorted({a["seq"] for a in applied}),
        actions_match=all(
            t["action"] == by_seq.get(t["applied_seq"]) == [float(np.float32(v)) for v in t["commanded"]]
            for t in transitions
        ),
        error=(err.strip().splitlines() or [""])[-1] if run.returncode else None,
    )


def run(quick: bool) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in (0.0, 0.01) if quick else RATES:  # quick: a smoke run, the clean link and the target's rate
            episodes = 1 if quick or rate >= 0.05 else 20
            budget = 30 if quick else (120 if rate >= 0.05 else 600)
            rows.append(faulty_episodes(rate, episodes, budget, Path(tmp)))
    clean = rows[0]["costs"]
    for row in rows:  # the same seeded starts: episode i against the clean run's episode i
        pairs = list(zip(row["costs"], clean, strict=False))
        row["cost_ratio_to_clean"] = float(np.mean([a / b for a, b in pairs])) if pairs else None
    one = next(r for r in rows if r["rate"] == 0.01)
    actions = "the ones applied" if one["actions_match"] else "NOT the ones applied"
    once = "each applied once" if one["applied_once"] else "some applied TWICE"
    targets = [
        dict(
            target="lockstep at 1 % byte faults: every episode completes, the recorded actions the applied ones",
            measured=f"{one['episodes_completed']} of {one['episodes_asked']}, actions {actions}, {once}",
            met=one["episodes_completed"] == one["episodes_asked"] and one["actions_match"] and one["applied_once"],
        )
    ]
    return dict(rows=rows, targets=targets)


def print_table(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title="Lockstep pendulum through a faulty link (flipped bits, dropped bytes, garbage bursts)")
    for col in (
        "byte faults",
        "episodes",
        "seconds",
        "mean cost",
        "cost / clean",
        "commands resent",
        "repeats",
        "stopped by",
    ):
        table.add_column(col)
    for r in report["rows"]:
        table.add_row(
            f"{r['rate'] * 100:g} %",
            f"{r['episodes_completed']} of {r['episodes_asked']}",
            f"{r['seconds']:.0f}",
            "" if r["mean_cost"] is None else f"{r['mean_cost']:.1f}",
            "" if r["cost_ratio_to_clean"] is None else f"{r['cost_ratio_to_clean']:.3f}",
            str(r["commands_resent"]),
            str(r["plant_commands_repeated"]),
            (r["error"] or "").removeprefix("error: ").split(":")[0],  # the JSON keeps the whole line
        )
    console.print(table)
    for t in report["targets"]:
        console.print(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']}")
