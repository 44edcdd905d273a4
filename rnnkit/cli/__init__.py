"""The ``rnnkit`` command: one entry point, one module per subcommand.

Exit codes: 0 success, 2 usage error (bad flag, unknown name, unreadable data or checkpoint),
1 runtime failure. User errors print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import bench, diagnose, eval, sample, tasks, train

SUBCOMMANDS = {"train": train, "sample": sample, "eval": eval, "tasks": tasks, "bench": bench, "diagnose": diagnose}


class UsageError(Exception):
    """A mistake in how the command was called; exits 2 with the message."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, description: str | None = None, **kwargs) -> None:
        # the subcommands' descriptions are their module docstrings, written in reST for the
        # API reference; --help shows them as plain text (``--resume`` → --resume)
        super().__init__(*args, description=description.replace("``", "") if description else description, **kwargs)

    def error(self, message: str) -> None:  # one line and exit 2, as argparse does, minus the usage dump
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The ``rnnkit`` parser with one subcommand per module of this package."""
    parser = _Parser(prog="rnnkit", description="Recurrent neural networks on PyTorch.")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in SUBCOMMANDS.items():
        module.add_parser(subs)
    return parser


# the user's mistakes (exit 2): bad flags or settings, paths that are missing, taken or unusable
USER_ERRORS = (UsageError, ValueError, FileNotFoundError, FileExistsError, IsADirectoryError,
               NotADirectoryError, PermissionError)


def _say(e: BaseException) -> None:
    """One line on stderr, no traceback."""
    text = " ".join(str(e).split()) or type(e).__name__
    print(text if text.startswith("rnnkit") else f"rnnkit: error: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run ``rnnkit ARGV``; returns the exit code (0, 1, 2 or 130)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"] and (len(argv) == 1 or (argv[1].startswith("-") and argv[1] not in ("-h", "--help"))):
        argv.insert(1, "charlm")  # `rnnkit train [flags]` trains the default task
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return SUBCOMMANDS[args.command].run(args)
    except USER_ERRORS as e:  # ValueError: DataError, ConfigError, CheckpointError and the library's checks
        _say(e)
        return 2
    except (RuntimeError, OSError) as e:  # e.g. training diverged, disk full: a runtime failure
        _say(e)
        return 1
    except KeyboardInterrupt:
        print("rnnkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
