"""The command registry of ``python -m scoring``: each command is a function with its docstring as --help and its
arguments declared beside it (``@command``)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from scoring.store.cache import Cache


@dataclass(frozen=True)
class Command:
    run: Callable[[Cache, argparse.Namespace], int]
    arguments: tuple  # ((args, kwargs), …) for argparse's add_argument


COMMANDS: dict[str, Command] = {}


def arg(*names, **options) -> tuple:
    return names, options


def command(name: str, *arguments):
    """Register ``fn`` as the subcommand ``name`` with these arguments."""

    def wrap(fn):
        if name in COMMANDS:
            raise ValueError(f"command {name!r} is registered twice")
        COMMANDS[name] = Command(fn, arguments)
        return fn

    return wrap


def print_counts(title: str, counts: dict) -> None:
    print(f"  {title}: " + (", ".join(f"{k} {v}" for k, v in counts.items()) if counts else "none"))


