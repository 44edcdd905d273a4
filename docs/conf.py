"""Sphinx configuration: rnnkit's API reference from its docstrings, and the guides.

Build it with ``sphinx-build -W --keep-going -n -b html docs docs/_build/html`` (what
``tests/test_docs_build.py`` and so CI run): every warning fails the build, and ``-n`` (nitpicky)
makes every cross-reference that points nowhere a warning.

The docstrings are written the torch way, so the tools are torch's: autodoc reads them, napoleon
reads their Google-style ``Args:``/``Returns:`` sections, MathJax renders their ``.. math::``
blocks and ``:math:`` roles in the browser (the build itself needs no network). The guides are
Markdown, read by MyST. The theme is Furo: well kept, readable on phones and in dark mode, with a
sidebar that shows the whole page's outline, which the long API pages need.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib
import inspect
import os
import sys
import types
from pathlib import Path

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this checkout, whether or not it is installed

import rnnkit  # noqa: E402  (after the path is set)

project = "rnnkit"
author = "the rnnkit authors"
copyright = "the rnnkit authors, MIT licence"
release = version = rnnkit.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

html_theme = "furo"
html_title = f"rnnkit {release}"

# --- autodoc and napoleon -------------------------------------------------------------------
autodoc_default_options = {  # members are asked for per module (:members:): packages show only their overview
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True  # show ``forget_bias=DEFAULT_FORGET_BIAS``, not its value
autodoc_class_signature = "mixed"

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False  # "Returns:" reads as one paragraph, as in torch's docs
napoleon_custom_sections = [("Shapes", "params_style"), ("Inputs", "params_style"), ("Outputs", "params_style")]

# --- MyST (the guides and the index page are Markdown) --------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# --- cross-references -----------------------------------------------------------------------
nitpicky = True
# Every reference to rnnkit must resolve (see _resolve_by_import below). References to other
# libraries (torch, numpy, the standard library) cannot be linked: their inventories would have
# to be downloaded (intersphinx), and the build needs no network. The resolver checks that they
# name a real object and renders them as code without a link; a misspelt one still fails.


def _import_path(dotted: str):
    """The object a dotted path names, by importing its longest module prefix; None if none."""
    parts = dotted.split(".")
    if not all(part.isidentifier() for part in parts):
        return None  # not a Python name (e.g. prose mistaken for a type by napoleon)
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        return obj
    return None


def _canonical_name(obj, found_as: str) -> str:
    """Where ``obj`` is defined: ``module.qualname`` (modules: their name; data: as found)."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    obj = getattr(obj, "__func__", obj)  # bound methods
    obj = getattr(obj, "fget", obj)  # properties
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and (inspect.isclass(obj) or callable(obj)):
        return f"{module}.{qualname}"
    return found_as  # a constant: it is documented where it is defined, the path it was found by


def _resolve_by_import(app, env, node, contnode):
    """Resolve a Python reference the way Python resolves the name, then link where it is defined.

    The docstrings refer to objects by the names their module sees: ``:class:`SequenceOutput```
    in :mod:`rnnkit.models.patterns`, which imports it from :mod:`rnnkit.models.base`, or
    ``:class:`rnnkit.Recurrent```, re-exported by the package. The API pages document each
    object once, in the module that defines it; this handler imports the name in the
    reference's context and links to that one description. A name that imports as another
    library's object renders as code without a link; one that imports as nothing, or as an rnnkit
    object that has no description (or one of another kind than the role asks for), stays a
    warning, so the build fails.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    modname, clsname = node.get("py:module"), node.get("py:class")
    candidates = []
    if modname and clsname:
        candidates.append(f"{modname}.{clsname}.{target}")
    if modname:
        candidates.append(f"{modname}.{target}")
        parent = modname.rpartition(".")[0]
        if parent:  # a sibling module's relative name, e.g. :mod:`.synthetic` from rnnkit.data
            candidates.append(f"{parent}.{target}")
    candidates.append(target)
    for path in candidates:
        obj = _import_path(path)
        if obj is None:
            continue
        name = _canonical_name(obj, path)
        if name.partition(".")[0] != "rnnkit":
            return contnode  # another library's object: code, no link
        domain = env.get_domain("py")
        plain = copy.copy(node)
        for key in ("py:module", "py:class", "refspecific"):
            if key in plain:
                del plain[key]
        ref = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], name, plain, contnode)
        if ref is not None:
            return ref
    return None


def _skip_field_aliases(app, what, name, obj, skip, options):
    """Skip the "Alias for field number k" entries autodoc makes for each NamedTuple field.

    The NamedTuples describe their fields in an ``Attributes:`` section (napoleon turns it into
    one description per field); autodoc's own entries would describe each field a second time.
    """
    doc = getattr(obj, "__doc__", None) or ""
    if what == "class" and doc.startswith("Alias for field number"):
        return True
    return None


def _drop_torch_docstrings(app, what, name, obj, options, lines):
    """Drop docstrings inherited from torch (``forward``'s "Define the computation performed at
    every call..."): they describe torch.nn.Module, not the rnnkit method, whose inputs and
    shapes its class's docstring gives."""
    if what != "method":
        return
    owner = _import_path(name.rpartition(".")[0])
    attr = name.rpartition(".")[2]
    if not inspect.isclass(owner):
        return
    for cls in owner.__mro__:  # the first class that gives the attribute a docstring
        member = cls.__dict__.get(attr)
        if member is not None and getattr(member, "__doc__", None):
            if not cls.__module__.startswith("rnnkit"):
                lines.clear()
            return


def _show_default_factories(app, what, name, obj, options, signature, return_annotation):
    """Show a dataclass field's ``default_factory`` (``metrics: dict = dict()``) where the
    signature says ``<factory>``, which is not Python and breaks the signature's parsing."""
    if what != "class" or not signature or "<factory>" not in signature or not dataclasses.is_dataclass(obj):
        return None
    for f in dataclasses.fields(obj):
        if f.init and f.default_factory is not dataclasses.MISSING:
            factory = getattr(f.default_factory, "__qualname__", "")
            shown = f"{factory}()" if factory.isidentifier() else "..."
            signature = signature.replace("<factory>", shown, 1)
    return signature, return_annotation


# --- the command line's --help, generated at build time -------------------------------------


@contextlib.contextmanager
def _columns(width: int):
    """argparse wraps help to $COLUMNS: fix it so the pages do not depend on the terminal."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of ``parser`` by name (empty if it has none)."""
    for action in parser._actions:  # argparse has no public accessor for them
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


class RnnkitHelp(SphinxDirective):
    """``.. rnnkit-help:: train charlm`` — the ``--help`` text of that command, as a literal block.

    With no argument, the help of ``rnnkit`` itself. The option ``:subcommands:`` appends one
    section per subcommand of the named command (``rnnkit train``'s tasks).
    """

    optional_arguments = 8
    has_content = False
    option_spec = {"subcommands": lambda arg: True}

    def run(self) -> list[nodes.Node]:
        from rnnkit.cli import build_parser

        parser = build_parser()
        for word in self.arguments:
            subs = _subparsers(parser)
            if word not in subs:
                raise self.error(
                    f"rnnkit-help: {' '.join(self.arguments)!r}: no subcommand {word!r}; expected one of {sorted(subs)}"
                )
            parser = subs[word]
        out: list[nodes.Node] = [self._block(parser)]
        if "subcommands" in self.options:
            for name, sub in _subparsers(parser).items():
                command = " ".join(["rnnkit", *self.arguments, name])
                section = nodes.section(ids=[nodes.make_id(command)])
                section += nodes.title(text=command)
                section += self._block(sub)
                out.append(section)
        return out

    @staticmethod
    def _block(parser: argparse.ArgumentParser) -> nodes.Node:
        with _columns(100):
            text = parser.format_help()
        return nodes.literal_block(text, text, language="text")


def setup(app):
    """Register the reference resolver and the ``rnnkit-help`` directive."""
    app.connect("missing-reference", _resolve_by_import)
    app.connect("autodoc-skip-member", _skip_field_aliases)
    app.connect("autodoc-process-docstring", _drop_torch_docstrings)
    app.connect("autodoc-process-signature", _show_default_factories)
    app.add_directive("rnnkit-help", RnnkitHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
