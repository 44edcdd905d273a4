"""The ``rnnkit`` command: one entry point, one module per subcommand.

Exit codes: 0 success, 2 usage error (bad flag, unknown name, unreadable data or checkpoint),
1 runtime failure. User errors print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import sys
from pathlib import Path

from . import bench, diagnose, eval, export, prepare, sample, tasks, train

SUBCOMMANDS = {
    "train": train,
    "sample": sample,
    "eval": eval,
    "export": export,
    "tasks": tasks,
    "bench": bench,
    "diagnose": diagnose,
    "prepare": prepare,
}


class UsageError(Exception):
    """A mistake in how the command was called; exits 2 with the message."""


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default once: not where the help already says it, and not when it is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or "default" in text:
            return text
        if isinstance(default, str) and not default.strip():  # a newline or a space, shown as such
            return f"{text} (default: {default!r})".replace("%", "%%")
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, description: str | None = None, **kwargs) -> None:
        # the subcommands' descriptions are their module docstrings, written in reST for the
        # API reference; --help shows them as plain text (``--resume`` → --resume)
        if kwargs.get("formatter_class") is argparse.ArgumentDefaultsHelpFormatter:
            kwargs["formatter_class"] = _DefaultsHelp
        super().__init__(*args, description=description.replace("``", "") if description else description, **kwargs)

    def error(self, message: str) -> None:  # one line and exit 2, as argparse does, minus the usage dump
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The ``rnnkit`` parser with one subcommand per module of this package."""
    from .. import __version__

    parser = _Parser(prog="rnnkit", description="Recurrent neural networks on PyTorch.")
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in SUBCOMMANDS.values():
        module.add_parser(subs)
    return parser


def _subparser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The innermost parser ``argv`` reaches (``rnnkit train charlm`` → the charlm one)."""
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
    return parser


def suggest_flags(parser: argparse.ArgumentParser, argv: list[str], message: str) -> str:
    """``message`` with "did you mean --x?" for each unrecognised flag close to a known one."""
    if not message.startswith("unrecognized arguments:"):
        return message
    known = [s for a in _subparser(parser, argv)._actions for s in a.option_strings if a.help != argparse.SUPPRESS]
    hints = []
    for word in message.split(":", 1)[1].split():
        flag = word.split("=", 1)[0]
        if flag.startswith("--"):
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            if close:
                hints.append(f"{flag}: did you mean {close[0]}?")
    return message + ("; " + "; ".join(hints) if hints else "")


def invocation() -> str:
    """How the user started rnnkit, as they can type it again: ``scripts/rnnkit`` (set by that
    script), ``rnnkit`` when that name on the PATH is this program, its path otherwise, or
    ``python -m rnnkit`` with the interpreter that runs it."""
    script = os.environ.get("RNNKIT_PROG")
    if script:
        return _short(script)
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "rnnkit":
        found = shutil.which("rnnkit")
        if found and Path(found).resolve() == argv0.resolve():
            return "rnnkit"
        return _short(str(argv0))
    return f"{_short(sys.executable)} -m rnnkit"


def _short(path: str) -> str:
    """``path`` relative to the working folder when inside it (``.venv/bin/python``), else as is."""
    try:
        rel = Path(path).resolve().relative_to(Path.cwd().resolve()) if os.path.isabs(path) else Path(path)
    except ValueError:
        return path
    text = str(rel)
    return text if "/" in text else f"./{text}"


def _say(e: BaseException) -> None:
    """One line on stderr, no traceback."""
    text = " ".join(str(e).split()) or type(e).__name__
    print(text if text.startswith("rnnkit") else f"rnnkit: error: {text}", file=sys.stderr)


# the user's mistakes (exit 2): bad flags or settings, paths that are missing, taken or unusable
USER_ERRORS = (
    UsageError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def main(argv: list[str] | None = None) -> int:
    """Run ``rnnkit ARGV``; returns the exit code (0, 1, 2 or 130)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"] and (len(argv) == 1 or argv[1].startswith("-")):
        argv.insert(1, train.DEFAULT_TASK)  # `rnnkit train [flags]` (and `--help`) is the default task's
    try:
        try:
            args = parser.parse_args(argv)
        except UsageError as e:
            raise UsageError(
                suggest_flags(parser, argv, str(e).split(": ", 1)[1])
                if str(e).startswith("rnnkit: unrecognized")
                else str(e)
            ) from None
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
