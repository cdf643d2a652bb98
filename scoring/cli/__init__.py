"""``python -m scoring``: a thin command line over the library. Commands live in scoring.cli.commands, for the
preference-pair checks scoring.cli.pairs, for ``evaluate`` scoring.cli.evaluate; each registers itself with
scoring.cli.registry."""
from __future__ import annotations

import argparse
import sys

from scoring.cli import commands, evaluate, pairs  # noqa: F401  (importing them registers their commands)
from scoring.cli.registry import COMMANDS
from scoring.env import cache_dir
from scoring.errors import UserError
from scoring.store.cache import Cache

__all__ = ["COMMANDS", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", default=argparse.SUPPRESS, help="cache folder (default $DAVIR_CACHE or ./cache)")
    parser = argparse.ArgumentParser(prog="python -m scoring", parents=[common],
                                     description="DavIR Studio: score, select and export training examples.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        doc = (cmd.run.__doc__ or "").strip()
        p = sub.add_parser(name, parents=[common], help=doc.splitlines()[0], description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        for names, options in cmd.arguments:
            p.add_argument(*names, **options)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the user typed, for manifests
    try:
        cache = Cache(cache_dir(getattr(args, "cache", None)))
        return COMMANDS[args.command].run(cache, args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished parts are kept, run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


