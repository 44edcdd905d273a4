"""The guides and the examples run, so the documentation cannot drift from the code.

* every ```python block of every page of ``docs/guides/`` runs, page by page, top to bottom in
  one namespace, in a fresh folder, with ``RNNKIT_DOCS_QUICK=1`` (the pages' own switch to tiny
  sizes);
* every script of ``examples/`` runs with ``--quick`` in a subprocess, and imports from rnnkit
  only names its modules export;
* every ``rnnkit …`` command a guide or an example shows parses with the real command line (the
  subcommand itself is not run), and ``train`` commands' settings pass the config checks.

Run one page at full size, as the figures quoted in it were made::

    OMP_NUM_THREADS=1 .venv/bin/python tests/test_guides.py docs/guides/forecasting.md
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = ROOT / "docs" / "guides"
EXAMPLES = ROOT / "examples"
PAGES = sorted(p for p in GUIDES.glob("*.md") if p.name != "index.md")
SCRIPTS = sorted(EXAMPLES.glob("*.py"))
QUICK_LINE = 'QUICK = os.environ.get("RNNKIT_DOCS_QUICK") == "1"'


def python_blocks(page: Path) -> list[str]:
    """The page's ```python blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)


def shell_commands(text: str) -> list[str]:
    """Every ``rnnkit …`` command line of the text's ```bash blocks (comments stripped;
    ``scripts/rnnkit`` and ``.venv/bin/rnnkit`` read as ``rnnkit``)."""
    commands = []
    for block in re.findall(r"^```(?:bash|console|sh)\n(.*?)^```", text, re.S | re.M):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and Path(words[0]).name == "rnnkit":
                commands.append(shlex.join(["rnnkit", *words[1:]]))
    return commands


def run_page(page: Path) -> dict:
    """Execute the page's Python blocks in one namespace (in the current folder); return it."""
    namespace: dict = {"__name__": "__guide__"}
    for k, block in enumerate(python_blocks(page), 1):
        exec(compile(block, f"{page.name} [python block {k}]", "exec"), namespace)
    return namespace


@pytest.fixture
def quick(tmp_path, monkeypatch):
    """A fresh working folder, tiny sizes, and headless plots."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RNNKIT_DOCS_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return tmp_path


def test_the_guides_are_there_and_the_index_lists_each_once():
    names = {p.stem for p in PAGES}
    assert names == {"charlm", "long_time_lags", "seq2seq", "custom_cell", "forecasting", "own_sequences"}
    toctree = re.search(r"```\{toctree\}\n(.*?)```", (GUIDES / "index.md").read_text(encoding="utf-8"), re.S).group(1)
    listed = [line.strip() for line in toctree.splitlines() if line.strip() and not line.startswith(":")]
    assert sorted(listed) == sorted(names)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_guide_opens_with_its_size_switch(page):
    blocks = python_blocks(page)
    assert len(blocks) >= 3, f"{page.name}: a guide is prose between several Python blocks"
    assert QUICK_LINE in blocks[0], f"{page.name}: the first Python block must show the switch {QUICK_LINE!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_guide_runs_top_to_bottom(page, quick):
    namespace = run_page(page)
    assert namespace["QUICK"] is True  # the page read the switch this test set


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_example_runs_quick(script, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    env.setdefault("OMP_NUM_THREADS", "1")
    done = subprocess.run(
        [sys.executable, str(script), "--quick"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{script.name} --quick failed:\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip(), f"{script.name} printed nothing"


def test_there_are_four_to_six_examples_each_saying_what_it_shows_and_how_to_run_it():
    assert 4 <= len(SCRIPTS) <= 6, [s.name for s in SCRIPTS]
    for script in SCRIPTS:
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")))
        assert doc, f"{script.name} has no module docstring"
        assert f"examples/{script.name}" in doc and "--quick" in doc, (
            f"{script.name}: the docstring must show how to run it"
        )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_example_uses_only_exported_names(script):
    tree = ast.parse(script.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "rnnkit":
            exported = set(getattr(importlib.import_module(node.module), "__all__", ()))
            hidden = [a.name for a in node.names if a.name not in exported]
            assert not hidden, f"{script.name}: {node.module} does not export {hidden} (its __all__)"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name == "rnnkit" or not alias.name.startswith("rnnkit."), (
                    f"{script.name}: import {alias.name}"
                )


SHOWN = [(p.name, c) for p in [*PAGES, *SCRIPTS] for c in shell_commands(p.read_text(encoding="utf-8"))]


def test_the_guides_show_commands():
    assert {name for name, _ in SHOWN} >= {p.name for p in PAGES}


@pytest.mark.parametrize("where, command", SHOWN, ids=[f"{w}: {c}" for w, c in SHOWN])
def test_shown_command_parses(where, command, monkeypatch, capsys):
    """The command goes through ``rnnkit.cli.main`` as typed; the subcommand's ``run`` is replaced
    by one that only records the parsed arguments (and, for ``train``, resolves the config)."""
    from rnnkit import cli
    from rnnkit.cli.train import resolve_config
    from rnnkit.tasks import TASKS

    seen = []

    def record(args):
        if args.command == "train" and not args.resume:
            resolve_config(TASKS[args.task], args).check()  # types and unknown keys, then the task's own checks
        seen.append(args)
        return 0

    for module in cli.SUBCOMMANDS.values():
        monkeypatch.setattr(module, "run", record)
    code = cli.main(shlex.split(command)[1:])
    assert code == 0, f"{where}: `{command}` does not parse: {capsys.readouterr().err.strip()}"
    assert len(seen) == 1


def test_a_mistyped_command_is_caught(monkeypatch, capsys):
    """The check above can fail: a misspelt flag and a bad value are refused, without running."""
    from rnnkit import cli

    monkeypatch.setattr(cli.train, "run", lambda args: pytest.fail("must not run"))
    assert cli.main(["train", "--hiden-size", "64"]) == 2
    assert "unrecognized arguments: --hiden-size" in capsys.readouterr().err
    from rnnkit.cli.train import resolve_config
    from rnnkit.tasks import TASKS

    args = cli.build_parser().parse_args(["train", "adding", "--cell", "lstmm"])
    with pytest.raises(ValueError, match="unknown cell 'lstmm'"):
        resolve_config(TASKS["adding"], args).check()


if __name__ == "__main__":  # one page at full size, in the current folder, output shown as it runs
    for arg in sys.argv[1:]:
        os.environ.setdefault("MPLBACKEND", "Agg")
        run_page(Path(arg).resolve())
