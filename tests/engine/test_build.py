"""Building and loading the fused engine (rnnkit.engine.build): the build folder is keyed by the
environment, a build needed at run time says so on stderr and loading a finished one is silent,
overrides are honoured, concurrent processes wait for one build. The compiler is faked here
(torch's ``cpp_extension.load`` replaced), except in the one test that loads the real build."""

from __future__ import annotations

import fcntl
import shutil
import sys
import threading
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension

from rnnkit.engine import build

FLAGS = ["-O3"]


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process that has not loaded the extension yet, building into an empty folder, with a fake
    compiler that records its calls and a fake import of finished builds."""
    monkeypatch.setattr(build, "_extension", None)
    monkeypatch.setattr(build, "_build_error", None)
    monkeypatch.setattr(build, "_warned", False)
    monkeypatch.setenv("RNNKIT_EXTENSIONS_DIR", str(tmp_path / "ext"))
    calls = types.SimpleNamespace(compiled=[], imported=[])

    def fake_load(name, sources, extra_cflags, extra_include_paths, build_directory, verbose):
        calls.compiled.append(dict(name=name, sources=sources, build_directory=build_directory))
        assert not (Path(build_directory) / "lock").exists(), "a stale torch lock file was left in place"
        (Path(build_directory) / f"{name}.so").write_bytes(b"fake")
        return types.SimpleNamespace(name=name, how="compiled")

    def fake_import(name, directory):
        calls.imported.append(directory)
        return types.SimpleNamespace(name=name, how="imported")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    monkeypatch.setattr(build, "_import_built", fake_import)
    return calls


# -- the folder key --------------------------------------------------------------------------------


def test_the_name_is_stable_for_the_same_environment_and_sources():
    assert build._extension_name(FLAGS) == build._extension_name(list(FLAGS))
    assert build._extension_name(FLAGS).startswith("rnnkit_fused_")


def test_the_name_differs_for_another_torch_install_path(monkeypatch):
    here = build._extension_name(FLAGS)
    monkeypatch.setattr(torch, "__file__", "/elsewhere/venv/lib/python3.11/site-packages/torch/__init__.py")
    assert build._extension_name(FLAGS) != here


def test_the_name_differs_for_another_torch_version(monkeypatch):
    here = build._extension_name(FLAGS)
    monkeypatch.setattr(torch, "__version__", "2.99.0+cpu")
    assert build._extension_name(FLAGS) != here


def test_the_name_differs_for_another_python(monkeypatch):
    here = build._extension_name(FLAGS)
    monkeypatch.setattr(sys, "version", "3.12.1 (main) [GCC 13]")
    assert build._extension_name(FLAGS) != here


def test_the_name_differs_for_other_flags_and_other_sources(monkeypatch, tmp_path):
    here = build._extension_name(FLAGS)
    assert build._extension_name(FLAGS + ["-DX"]) != here
    csrc = tmp_path / "csrc"
    shutil.copytree(build.CSRC, csrc)
    monkeypatch.setattr(build, "CSRC", csrc)
    assert build._extension_name(FLAGS) == here
    header = csrc / build.HEADERS[0]
    original = header.read_bytes()
    header.write_bytes(original + b"\n// edited\n")
    assert build._extension_name(FLAGS) != here
    header.write_bytes(original)
    (csrc / "extra.h").write_text("// a header no list names yet\n")
    assert build._extension_name(FLAGS) != here


# -- where builds go -------------------------------------------------------------------------------


def test_the_overrides_are_honoured_rnnkit_first(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch"))
    monkeypatch.setenv("RNNKIT_EXTENSIONS_DIR", str(tmp_path / "rnnkit"))
    assert build.extensions_root() == tmp_path / "rnnkit"
    assert build.extension_directory().parent == tmp_path / "rnnkit"
    monkeypatch.delenv("RNNKIT_EXTENSIONS_DIR")
    assert build.extensions_root() == tmp_path / "torch"


def test_the_default_is_inside_the_virtual_environment_else_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("RNNKIT_EXTENSIONS_DIR", raising=False)
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    venv, base = tmp_path / "venv", tmp_path / "base"
    venv.mkdir(), base.mkdir()
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "base_prefix", str(base))
    assert build.extensions_root() == venv / "var" / "cache" / "rnnkit"
    monkeypatch.setattr(sys, "prefix", str(base))  # no virtual environment: the user's cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert build.extensions_root() == tmp_path / "cache" / "rnnkit" / "extensions"


def test_two_environments_sharing_one_root_get_separate_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    first = build.extension_directory()
    monkeypatch.setattr(torch, "__file__", "/other/venv/lib/python3.11/site-packages/torch/__init__.py")
    second = build.extension_directory()
    assert first.parent == second.parent == tmp_path and first != second


# -- saying what happens ---------------------------------------------------------------------------


def test_a_needed_build_says_so_and_a_finished_one_loads_silently(fresh, capsys):
    ext = build.load_extension()
    directory = build.extension_directory()
    assert ext.how == "compiled" and build.build_error() is None
    [call] = fresh.compiled
    assert Path(call["build_directory"]) == directory and call["name"] == directory.name
    assert call["sources"] == [str(build.CSRC / s) for s in build.SOURCES]  # every source, one extension
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[0].startswith("rnnkit: compiling the fused engine for this environment (once, about a minute; ")
    assert f"cached in {directory})..." in err[0]
    assert err[1].startswith("rnnkit: fused engine compiled in ") and err[1].endswith(" s")
    assert (directory / build.STAMP).is_file() and build.is_built()

    assert build.load_extension() is ext  # the same process: kept
    build._extension = None  # a new process: loads the finished build, silently
    assert build.load_extension().how == "imported"
    assert len(fresh.compiled) == 1 and fresh.imported == [directory]
    assert capsys.readouterr().err == ""


def test_an_interrupted_build_is_redone_never_loaded(fresh, capsys):
    directory = build.extension_directory()
    directory.mkdir(parents=True)
    (directory / f"{directory.name}.so").write_bytes(b"half")
    (directory / "lock").touch()  # torch's lock file from a build that was killed
    assert build.load_extension().how == "compiled"
    assert len(fresh.compiled) == 1 and fresh.imported == []
    assert "compiling the fused engine" in capsys.readouterr().err


def test_a_failed_build_says_so_once_then_falls_back_with_one_warning(fresh, monkeypatch, capsys):
    def broken_load(**kwargs):
        raise RuntimeError("Error building extension 'x':\n[1/2] c++ ... lots of compiler output")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", broken_load)
    assert build.load_extension() is None
    assert build.load_extension() is None  # not retried in the same process
    assert isinstance(build.build_error(), RuntimeError)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[1].startswith("rnnkit: compiling the fused engine failed after ")
    assert err[1].endswith("(RuntimeError: Error building extension 'x':)")
    assert not build.is_built()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        build.warn_fallback_once()
        build.warn_fallback_once()
    assert [str(w.message) for w in record if "could not be built" in str(w.message)] == [
        f"rnnkit: the fused engine could not be built (RuntimeError: {build.build_error()}); cells without a "
        "native torch kernel run on the reference loop, which is several times slower. "
        "Set RNNKIT_ENGINE=reference to choose that path and silence this warning."
    ]


def test_a_process_waits_for_the_one_already_building_then_loads_its_build(fresh, capsys):
    directory = build.extension_directory()
    directory.mkdir(parents=True)
    result = {}
    with open(directory / build.LOCK, "a+") as other:  # another process is compiling
        fcntl.flock(other, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: result.setdefault("ext", build.load_extension()))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive(), "did not wait for the lock"
        build._write_stamp(directory, directory.name, FLAGS, 1.0)  # ... and finishes
        fcntl.flock(other, fcntl.LOCK_UN)
    waiter.join(10)
    assert result["ext"].how == "imported" and fresh.compiled == []
    err = capsys.readouterr().err
    assert "rnnkit: waiting for another process compiling the fused engine in" in err
    assert "compiled by another process" in err


def test_the_build_command_says_where_and_how_long(fresh, capsys):
    assert build.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"rnnkit: fused engine ready in {build.extension_directory()} (took ")
    build._extension = None
    assert build.main([]) == 0
    assert "(already built; loaded in " in capsys.readouterr().out


def test_engine_override_reads_rnnkit_engine(monkeypatch):
    monkeypatch.delenv("RNNKIT_ENGINE", raising=False)
    assert build.engine_override() is None
    monkeypatch.setenv("RNNKIT_ENGINE", " Reference ")
    assert build.engine_override() == "reference"
    monkeypatch.setenv("RNNKIT_ENGINE", "fast")
    with pytest.raises(ValueError, match="RNNKIT_ENGINE must be"):
        build.engine_override()


# -- the real thing --------------------------------------------------------------------------------


def test_the_real_build_loads_from_this_environments_folder(monkeypatch):
    """Loads the extension that setup built (compiles it only if this environment has none yet)."""
    monkeypatch.setattr(build, "_extension", None)
    monkeypatch.setattr(build, "_build_error", None)
    ext = build.load_extension()
    assert ext is not None, f"the fused engine could not be built: {build.build_error()}"
    assert Path(ext.__file__).parent == build.extension_directory()
    assert build.is_built()
