r"""Building and loading the fused engine's C++ extension (sources in ``rnnkit/engine/csrc/``).

The extension is compiled with torch's extension toolchain (``torch.utils.cpp_extension.load``,
g++ and ninja) — about 40–90 s, once per environment — into a folder of its own::

    ROOT/rnnkit_fused_<hash>/

The hash covers everything the binary depends on: the C++ sources and headers, the compiler
flags, torch's version *and install path*, the Python version and the machine. So a stale build
is never loaded, and several virtual environments (even with the same torch version) each get
their own build instead of evicting each other's. ``ROOT`` is, in order:

* ``RNNKIT_EXTENSIONS_DIR``, if set;
* ``TORCH_EXTENSIONS_DIR``, if set (torch's own override);
* inside the active virtual or conda environment, ``<sys.prefix>/var/cache/rnnkit`` (deleted with
  the environment), when that is writable;
* else the user's cache, ``$XDG_CACHE_HOME/rnnkit/extensions`` (``~/.cache/rnnkit/extensions``).

Build it ahead of time (``scripts/rnnkit`` and ``scripts/test`` do so during setup, and again
when the C++ sources change)::

    python -m rnnkit.engine.build            # prints where it is and how long it took

At run time, a process that finds no finished build compiles it and says so on stderr, one line
before (what, how long to expect, where) and one after (how long it took); loading a finished
build is silent and takes milliseconds. Concurrent processes are safe: one compiles while the
others wait on a lock (an ``flock``, released by the operating system even if the compiling
process is killed), then load its result. A build counts as finished only once it has written its
stamp file, so an interrupted build is redone, never loaded.

If the extension cannot be built, :func:`load_extension` returns None and :class:`rnnkit.Recurrent`
falls back to the reference loop with one warning per process (:func:`warn_fallback_once`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

CSRC = Path(__file__).with_name("csrc")
#: The translation units compiled into the one extension module, relative to ``rnnkit/engine/csrc``.
SOURCES = ("program.cpp",)
#: The headers they include (every file under ``csrc`` enters the build's hash regardless).
HEADERS = ("vecmath.h",)

STAMP = "rnnkit-build.json"  # written last: its presence means the folder holds a finished build
LOCK = "rnnkit-build.lock"  # flock'ed by the one process compiling into the folder

_extension: Any = None
_build_error: BaseException | None = None
_warned = False

# `python -m rnnkit.engine.build` imports the package first, which imports this module (through
# rnnkit.recurrent and the fused engine); runpy then warns that the module is already imported.
# Running it again as __main__ is harmless here (main() only calls load_extension), so hush that.
warnings.filterwarnings("ignore", message=r"'rnnkit\.engine\.build' found in sys\.modules", category=RuntimeWarning)


# -- what is built, and where ------------------------------------------------------------------------


def _torch_exports(*names: str) -> bool:
    """Whether torch's CPU library exports every one of ``names`` (MKL's Fortran BLAS symbols in
    the x86 wheels), which the engine then calls directly instead of through ATen."""
    import ctypes

    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        handle = ctypes.CDLL(str(lib))
        return all(hasattr(handle, name) for name in names)
    except OSError:
        return False


def _torch_exports_blas() -> bool:
    """Whether torch exports the BLAS ``sgemm_``/``dgemm_`` for the engine's per-step products."""
    return _torch_exports("sgemm_", "dgemm_")


def _build_flags() -> list[str]:
    # -fopenmp-simd: `#pragma omp simd reduction` lets the row sums vectorise (no threads, no runtime)
    flags = ["-O3", "-fopenmp-simd"]
    # ATen's Vectorized<T> uses SLEEF's AVX2 exp/tanh when told the CPU has AVX2; torch itself
    # says whether it does. Elsewhere it falls back to plain loops, which are correct, slower.
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    if _torch_exports_blas():
        flags.append("-DRNNKIT_BLAS_SYMBOLS")
        # MKL's packed single-precision products: W packed once per call, reused every step
        if _torch_exports("sgemm_pack_get_size_", "sgemm_pack_", "sgemm_compute_"):
            flags.append("-DRNNKIT_MKL_PACKED")
    return flags


def _environment() -> dict[str, str]:
    """What a build depends on besides the sources and flags: torch (version and where it is
    installed), the Python interpreter and the machine."""
    return {
        "torch": torch.__version__,
        "torch_path": str(Path(torch.__file__).resolve().parent),
        "python": f"{sys.implementation.cache_tag} {sys.version}",
        "machine": platform.machine(),
    }


def _source_files() -> list[Path]:
    """Every file under :data:`CSRC` (so an edit to any header counts), in a stable order."""
    listed = {CSRC / name for name in SOURCES + HEADERS}
    return sorted(listed | {p for p in CSRC.rglob("*") if p.is_file() and "__pycache__" not in p.parts})


def _extension_name(flags: list[str]) -> str:
    """A name that changes with the sources, the flags, torch (version and install path), Python
    and the machine, so a stale build is never loaded and environments never share one."""
    digest = hashlib.sha256()
    for path in _source_files():
        digest.update(path.relative_to(CSRC).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(" ".join(SOURCES).encode() + b"\0")
    digest.update(" ".join(flags).encode() + b"\0")
    digest.update(json.dumps(_environment(), sort_keys=True).encode())
    return f"rnnkit_fused_{digest.hexdigest()[:16]}"


def extensions_root() -> Path:
    """The folder that holds the builds: ``RNNKIT_EXTENSIONS_DIR``, else ``TORCH_EXTENSIONS_DIR``,
    else ``<sys.prefix>/var/cache/rnnkit`` in a writable virtual or conda environment, else
    ``$XDG_CACHE_HOME/rnnkit/extensions`` (``~/.cache/rnnkit/extensions``)."""
    for var in ("RNNKIT_EXTENSIONS_DIR", "TORCH_EXTENSIONS_DIR"):
        value = os.environ.get(var, "").strip()
        if value:
            return Path(value).expanduser()
    prefix = Path(sys.prefix)
    in_env = sys.prefix != sys.base_prefix or (prefix / "conda-meta").is_dir()
    if in_env and os.access(prefix, os.W_OK):
        return prefix / "var" / "cache" / "rnnkit"
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(cache) / "rnnkit" / "extensions"


def extension_directory() -> Path:
    """Where this environment's build of the current sources lives (it may not exist yet)."""
    return extensions_root() / _extension_name(_build_flags())


def is_built() -> bool:
    """Whether a finished build for this environment and these sources exists (no compiling needed)."""
    return (extension_directory() / STAMP).is_file()


# -- compiling and loading ---------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"rnnkit: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[bool]:
    """Hold the folder's build lock; yields whether another process held it first (so we waited).
    An ``flock`` dies with its process: a killed build never leaves a lock behind."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): torch's own lock file is all there is
        yield False
        return
    with open(directory / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            _say(f"waiting for another process compiling the fused engine in {directory} (about a minute)...")
            fcntl.flock(handle, fcntl.LOCK_EX)
            waited = True
        try:
            yield waited
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _torch_build(name: str, directory: Path, flags: list[str]) -> Any:
    """Compile all :data:`SOURCES` into one extension module in ``directory`` and import it."""
    from torch.utils.cpp_extension import load

    # Only the holder of our flock gets here, so a torch lock file left by a killed build is stale;
    # torch would otherwise wait on it forever.
    with contextlib.suppress(FileNotFoundError):
        (directory / "lock").unlink()
    return load(
        name=name,
        sources=[str(CSRC / source) for source in SOURCES],
        extra_cflags=flags,
        extra_include_paths=[str(CSRC)],
        build_directory=str(directory),
        verbose=False,
    )


def _import_built(name: str, directory: Path) -> Any:
    """Import a finished build without running the toolchain at all."""
    path = directory / f"{name}{'.pyd' if os.name == 'nt' else '.so'}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the fused engine from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_stamp(directory: Path, name: str, flags: list[str], seconds: float) -> None:
    record = {
        "name": name,
        "sources": list(SOURCES),
        "flags": flags,
        **_environment(),
        "compile_seconds": round(seconds, 1),
        "built": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    tmp = directory / f".{STAMP}.{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, directory / STAMP)


def _compile() -> Any:
    """This environment's extension: imported from its folder when built, else compiled there first
    (one line on stderr before, one after). Raises if it cannot be built."""
    flags = _build_flags()
    name = _extension_name(flags)
    directory = extensions_root() / name
    damaged = False
    if (directory / STAMP).is_file():
        try:
            return _import_built(name, directory)
        except Exception:  # a damaged build: compile it again below
            damaged = True
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with _locked(directory) as waited:
        if (directory / STAMP).is_file() and (waited or not damaged):  # another process finished it
            module = _import_built(name, directory)
            if waited:
                _say(f"fused engine ready after {time.perf_counter() - start:.0f} s (compiled by another process)")
            return module
        _say(f"compiling the fused engine for this environment (once, about a minute; cached in {directory})...")
        for stale in [STAMP] + ([f"{name}.so"] if damaged else []):
            with contextlib.suppress(FileNotFoundError):
                (directory / stale).unlink()
        try:
            module = _torch_build(name, directory, flags)
        except Exception as err:
            first_line = (str(err).strip().splitlines() or [""])[0][:200]
            _say(
                f"compiling the fused engine failed after {time.perf_counter() - start:.0f} s "
                f"({type(err).__name__}: {first_line})"
            )
            raise
        seconds = time.perf_counter() - start
        _write_stamp(directory, name, flags, seconds)
        _say(f"fused engine compiled in {seconds:.0f} s")
        return module


def load_extension() -> Any:
    """The compiled engine, building it on the first call if this environment has no build yet;
    None if it cannot be built.

    The outcome is kept for the process: a failed build is not retried, and its error is
    :func:`build_error`.
    """
    global _extension, _build_error
    if _extension is None and _build_error is None:
        try:
            _extension = _compile()
        except Exception as err:  # a compiler or loader failure of any kind means: no fused engine
            _build_error = err
    return _extension


def build_error() -> BaseException | None:
    """Why the extension could not be built, once :func:`load_extension` has failed; else None."""
    return _build_error


def warn_fallback_once() -> None:
    """The one warning per process that variant cells run on the reference loop."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"rnnkit: the fused engine could not be built ({type(_build_error).__name__}: {_build_error}); "
            "cells without a native torch kernel run on the reference loop, which is several times slower. "
            "Set RNNKIT_ENGINE=reference to choose that path and silence this warning.",
            RuntimeWarning,
            stacklevel=3,
        )


def engine_override() -> str | None:
    """``RNNKIT_ENGINE`` from the environment: ``"reference"`` or ``"native"`` (no fused engine) to
    restrict layers built with ``engine="auto"``; unset, empty or ``"auto"`` for no restriction."""
    value = os.environ.get("RNNKIT_ENGINE", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("reference", "native"):
        raise ValueError(f"RNNKIT_ENGINE must be 'auto', 'native' or 'reference', got {value!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m rnnkit.engine.build``: build (or load) this environment's extension, say where
    and how long it took; exit status 1 if it cannot be built."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rnnkit.engine.build", description=main.__doc__)
    parser.parse_args(argv)
    start = time.perf_counter()
    built_before = is_built()
    ext = load_extension()
    seconds = time.perf_counter() - start
    if ext is None:
        print(f"rnnkit: the fused engine could not be built: {build_error()}", file=sys.stderr)
        return 1
    how = f"already built; loaded in {seconds * 1000:.0f} ms" if built_before else f"took {seconds:.0f} s"
    print(f"rnnkit: fused engine ready in {extension_directory()} ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
