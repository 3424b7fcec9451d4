"""The argument parser of every mpq command (the robot's stdlib-only service and release tools aside): a bad
argument is one line naming it and where the options are listed, not argparse's usage block above it."""

from __future__ import annotations

import argparse


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} ({self.prog} --help lists the options)\n")
