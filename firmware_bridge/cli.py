"""The argument parser of every mpq command (the robot's stdlib-only service and release tools aside): a bad
argument is one line naming it and where the options are listed, not argparse's usage block above it; and the
command's log lines (warnings: a model trained for other settings, a recovered segment) print as `warning: ...`,
as its errors print `error: ...`."""

from __future__ import annotations

import argparse
import logging


class LevelPrefix(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} ({self.prog} --help lists the options)\n")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # argparse's own message names the top-level --help, which lists no subcommand's options
            command = getattr(parsed, "command", None)
            where = f"{self.prog} {command}" if command else self.prog
            self.exit(2, f"error: unrecognized arguments: {' '.join(extras)} ({where} --help lists the options)\n")
        handler = logging.StreamHandler()
        handler.setFormatter(LevelPrefix())
        logging.basicConfig(level=logging.WARNING, handlers=[handler])  # no-op where logging is set up already
        return parsed
