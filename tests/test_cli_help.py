"""Every command's --help prints its options: the README sends a newcomer there first (a "%" in a help text once
made `python -m offboard --help` a traceback)."""

from __future__ import annotations

import re

import pytest

from firmware_bridge import fault_proxy, standin
from offboard import __main__ as offboard_cli
from offboard import bench, bench_gpu, bench_ray, demo, gym_env, sweep
from onboard import __main__ as onboard_cli
from onboard import service

COMMANDS = {
    "python -m offboard": offboard_cli.main,
    "python -m onboard": onboard_cli.main,
    "python -m offboard.demo": demo.main,
    "python -m offboard.sweep": sweep.main,
    "python -m offboard.gym_env": gym_env.main,
    "python -m offboard.bench": bench.main,
    "python -m offboard.bench_gpu": bench_gpu.main,
    "python -m offboard.bench_ray": bench_ray.main,
    "python -m onboard.service": service.main,
    "python -m firmware_bridge.standin": standin.main,
    "python -m firmware_bridge.fault_proxy": fault_proxy.main,
}


def help_text(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_and_subcommand_prints_its_help(command, capsys):
    main = COMMANDS[command]
    text = help_text(main, [], capsys)
    assert text.startswith(f"usage: {command}")
    subcommands = re.search(r"\{([a-z,-]+)\}\s+\.\.\.", text)  # argparse's usage: {a,b,c} ... for subcommands
    assert bool(subcommands) == (command in ("python -m offboard", "python -m onboard"))
    for name in subcommands.group(1).split(",") if subcommands else []:
        assert help_text(main, [name], capsys).startswith(f"usage: {command} {name}")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "python -m onboard.service"])  # stdlib-only
def test_a_bad_argument_is_one_line_that_says_where_the_options_are(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        COMMANDS[command](["--no-such-option"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    # the first problem argparse finds (a missing required argument, or this option), then where the options are
    assert err.startswith("error: ") and err.endswith(f"({command} --help lists the options)\n")
