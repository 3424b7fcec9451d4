"""A command's options built from its settings dataclass: each field once, its comment as the option's help.

`--name-with-dashes` per field, typed by its annotation (`Literal[...]` gives the choices, `tuple[str, ...]`
takes several values, or the option several times; `bool` takes true/false, or nothing for true), default
None so that what was not given falls through to the dataclass's (or a task's) defaults. The settings check
themselves in their `__post_init__`: one place for every rule, for the command line and for code alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import tokenize
import types
import typing
from typing import Literal, get_args, get_origin


def option(name: str) -> str:
    """A field's option: updates_per_iteration -> --updates-per-iteration."""
    return "--" + name.replace("_", "-")


def parse_bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r}: use true or false")


def field_comments(cls) -> dict[str, str]:
    """Each field's comment in the class's source: the one on its line, else the block just above it."""
    comments, above, pending = {}, [], None
    tokens = tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline)
    for token in tokens:
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if pending is not None and token.start[0] == pending[1]:
                comments[pending[0]] = text
            else:
                above.append(text)
        elif token.type == tokenize.NAME and token.start[1] == 4 and token.line.strip().startswith(token.string):
            rest = token.line.strip()[len(token.string) :].lstrip()
            if rest.startswith(":"):  # a field: `name: type = default`
                pending = (token.string, token.start[0])
                if above:
                    comments[token.string] = " ".join(above)
            above = []
        elif token.type == tokenize.NEWLINE and pending is not None and token.start[0] != pending[1]:
            pending = None
    return comments


def _converter(annotation):
    """(type, nargs, choices) for an annotation such as int, int | None, tuple[str, ...], Literal["a", "b"]."""
    if get_origin(annotation) is Literal:
        return type(get_args(annotation)[0]), None, get_args(annotation)
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:  # X | None
        return _converter(args[0])
    if get_origin(annotation) is tuple:
        inner = get_args(annotation)
        if len(inner) == 2 and inner[1] is Ellipsis:
            return inner[0], "+", None
        return (lambda v: tuple(inner[0](x) for x in v.split(","))), None, None  # a fixed size: "a,b,c"
    if annotation is bool:
        return parse_bool, "?", None
    return annotation, None, None


def add_options(
    parser: argparse.ArgumentParser,
    cls,
    skip: tuple[str, ...] = (),
    defaults: dict | None = None,
    helps: dict | None = None,
) -> None:
    """One option per field of the dataclass `cls` (but those in `skip`), default None: not given. `defaults` and
    `helps`: what a command that reuses `cls` (the sweep reuses the demo's settings) does otherwise, for its help."""
    hints = typing.get_type_hints(cls)
    comments = {**field_comments(cls), **(helps or {})}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kind, nargs, choices = _converter(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        default = (defaults or {}).get(field.name, default)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) and nargs is None else format_value(default)
        help_text = comments.get(field.name, "") + (f" (default: {shown})" if shown else "")
        help_text = help_text.replace("%", "%%")  # prose ("95 %"), not argparse's %-formatting
        extra = dict(const=True) if nargs == "?" else dict(action="extend") if nargs == "+" else {}
        parser.add_argument(
            option(field.name), type=kind, nargs=nargs, choices=choices, default=None, help=help_text, **extra
        )


def given(args: argparse.Namespace, cls) -> dict:
    """The fields of `cls` that the command line gave."""
    names = {field.name for field in dataclasses.fields(cls)}
    return {name: value for name, value in vars(args).items() if name in names and value is not None}


def refuse_unless(settings, **rules) -> None:
    """Raise ValueError naming the first setting that breaks its rule: rules are name=(what to use, check)."""
    for name, (use, check) in rules.items():
        value = getattr(settings, name)
        if not check(value):
            raise ValueError(f"{option(name)} {format_value(value)}: use {use}")


def format_value(value) -> str:
    """A setting as it was typed on the command line."""
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value))
    return str(value)
