"""The documentation builds with every warning an error, and says what the code says.

The site is built once (``sphinx-build -W --keep-going -n``, as CI builds it); the tests then read
the HTML and the object inventory against independent sources: the docstrings themselves, the
package's modules as ``pkgutil`` finds them, and the ``--help`` text of the real parser.
"""

from __future__ import annotations

import html
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("myst_parser", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("furo", reason="the docs extra is not installed: pip install -e '.[docs]'")

from sphinx.util.inventory import InventoryFile  # noqa: E402

import rnnkit  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"


def sphinx_build(source: Path, out: Path, confdir: Path = DOCS) -> subprocess.CompletedProcess:
    """``sphinx-build -W --keep-going -n -b html`` from a clean output folder."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-n",
        "-q",
        "-b",
        "html",
        "-c",
        str(confdir),
        "-d",
        str(out / ".doctrees"),
        str(source),
        str(out),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    result = sphinx_build(DOCS, out)
    assert result.returncode == 0, f"sphinx-build failed (exit {result.returncode}):\n{result.stderr}"
    assert "WARNING" not in result.stderr and "ERROR" not in result.stderr, result.stderr
    return out


def text_of(page: Path) -> str:
    """A page's HTML with scripts, tags and entities removed."""
    raw = re.sub(r"<script.*?</script>", "", page.read_text(encoding="utf-8"), flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", raw))


def math_blocks(page: Path) -> list[str]:
    """The TeX source of every displayed equation on a page, as MathJax will typeset it."""
    raw = page.read_text(encoding="utf-8")
    return [html.unescape(m) for m in re.findall(r'<div class="math notranslate nohighlight">(.*?)</div>', raw, re.S)]


def public_modules() -> list[str]:
    """Every importable module of the package that a user may import (no ``_private``, no ``__main__``)."""
    names = ["rnnkit"]
    for info in pkgutil.walk_packages(rnnkit.__path__, "rnnkit."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return names


def test_lstm_equations_render_as_math(site):
    doc = inspect.getdoc(rnnkit.cells.LSTMCell)
    forget = next(line.strip() for line in doc.splitlines() if line.strip().startswith("f &= \\sigma"))
    update = next(line.strip() for line in doc.splitlines() if line.strip().startswith("c' &= f \\odot c"))
    blocks = [b for b in math_blocks(site / "api" / "cells.html") if forget in b]
    assert len(blocks) == 1, f"expected the forget-gate equation {forget!r} in one math block, found {len(blocks)}"
    assert update in blocks[0]
    # MathJax typesets the block in the browser: the page must load it
    assert re.search(r'<script[^>]+src="[^"]*mathjax[^"]*"', (site / "api" / "cells.html").read_text()), (
        "the cells page does not load MathJax"
    )


def test_every_cell_has_its_equations(site):
    blocks = "\n".join(math_blocks(site / "api" / "cells.html"))
    for cls in (
        rnnkit.ElmanCell,
        rnnkit.GRUCell,
        rnnkit.LeakyCell,
        rnnkit.SkipCell,
        rnnkit.ClockworkCell,
        rnnkit.DeepTransitionCell,
        rnnkit.AttentionCell,
    ):
        doc = inspect.getdoc(cls)
        math = re.search(r"\.\. math::\n((?:\s+.*\n?)+)", doc)
        assert math, f"{cls.__name__}'s docstring has no .. math:: block"
        first = math.group(1).strip().splitlines()[0].strip()
        assert first in blocks, f"{cls.__name__}'s equation {first!r} is not rendered on the cells page"


def test_every_module_and_public_object_is_documented(site):
    inventory = InventoryFile.load((site / "objects.inv").open("rb"), "", lambda base, uri: uri)
    modules = set(inventory.get("py:module", {}))
    documented = set().union(*(set(inventory.get(f"py:{kind}", {})) for kind in ("class", "exception", "function")))
    missing_modules = [m for m in public_modules() if m not in modules]
    assert not missing_modules, f"modules without an API page (add them to docs/api/*.rst): {missing_modules}"
    missing = []
    for name in public_modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and f"{name}.{attr}" not in documented:
                missing.append(f"{name}.{attr}")
    assert not missing, f"public classes and functions missing from the API reference: {missing}"


def test_reexported_names_link_to_their_one_description(site):
    # rnnkit/__init__.py's docstring says :class:`rnnkit.Recurrent`; the class is described in
    # rnnkit.recurrent, once
    page = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert 'href="layers.html#rnnkit.recurrent.Recurrent"' in page
    assert (site / "api" / "layers.html").read_text(encoding="utf-8").count('id="rnnkit.recurrent.Recurrent"') == 1


def test_cli_page_shows_each_commands_help(site):
    from rnnkit.cli import build_parser

    text = text_of(site / "api" / "cli.html")
    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    assert set(commands) == {"train", "sample", "eval", "export", "tasks", "bench", "diagnose", "prepare"}
    for name, sub in commands.items():
        assert f"usage: rnnkit {name}" in text, f"no --help text for rnnkit {name}"
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in text, f"rnnkit {name}: option {flag} missing from the CLI page"
    for task in rnnkit.tasks.TASKS:
        assert f"usage: rnnkit train {task}" in text, f"no --help text for rnnkit train {task}"


def test_broken_reference_fails_the_build(tmp_path):
    """The checks are live: a reference to an object that does not exist fails the build, in
    rnnkit or in torch, while re-exported names and other libraries' real objects do not."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "index.rst").write_text(
        "Probe\n=====\n\n"
        ".. py:class:: rnnkit.cells.lstm.LSTMCell\n\n   The one description.\n\n"
        "Re-exported: :class:`rnnkit.LSTMCell`, :class:`rnnkit.cells.LSTMCell`. "
        "Elsewhere: :class:`torch.nn.LSTM`, :mod:`tokenize`. "
        "Broken: :class:`rnnkit.cells.NoSuchCell`, :func:`rnnkit.no_such_function`, "
        ":class:`torch.nn.NoSuchModule`.\n",
        encoding="utf-8",
    )
    result = sphinx_build(source, tmp_path / "out")
    assert result.returncode != 0, "a build with broken references succeeded"
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 3, "\n".join(warnings)
    assert "py:class reference target not found: rnnkit.cells.NoSuchCell" in warnings[0]
    assert "py:func reference target not found: rnnkit.no_such_function" in warnings[1]
    assert "py:class reference target not found: torch.nn.NoSuchModule" in warnings[2]
