"""Native XLA:CPU extensions, compiled on first use (like StyleGAN2's custom ops).

``load(name)`` compiles ``jaxgan/native/<name>.cc`` against XLA's FFI headers (shipped with jaxlib) and the
oneDNN wheel (``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp``), caches the shared library under
``$JAXGAN_NATIVE_CACHE`` (default ``~/.cache/jaxgan/native``) keyed by the source, the compiler and the
versions, and loads it with ctypes. When anything is missing (no C++ compiler, no oneDNN, not Linux x86-64),
or ``JAXGAN_NATIVE=0``, it returns None and ``why_unavailable(name)`` says why: callers fall back to XLA.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import time

import jax
from absl import logging

_SOURCES = pathlib.Path(__file__).resolve().parent
_REASONS: dict[str, str] = {}


def _onednn_paths() -> tuple[pathlib.Path, pathlib.Path, str]:
  """(include dir, lib dir, version) of the oneDNN wheels; raises LookupError when absent."""
  try:
    lib = next(f for f in importlib.metadata.distribution("onednn-cpu-gomp").files
               if f.name.startswith("libdnnl.so"))
    header = next(f for f in importlib.metadata.distribution("onednn-devel-cpu-gomp").files
                  if str(f).endswith("oneapi/dnnl/dnnl.hpp"))
  except (importlib.metadata.PackageNotFoundError, StopIteration) as e:
    raise LookupError("the oneDNN wheels are not installed (pip install onednn-cpu-gomp "
                      "onednn-devel-cpu-gomp)") from e
  include = pathlib.Path(header.locate()).resolve().parents[2]
  return include, pathlib.Path(lib.locate()).resolve().parent, importlib.metadata.version("onednn-cpu-gomp")


def _toolchain() -> tuple[str, pathlib.Path, pathlib.Path, str]:
  """(C++ compiler, oneDNN include dir, lib dir, version); LookupError saying what is missing (or opted out)."""
  if os.environ.get("JAXGAN_NATIVE", "1") == "0":
    raise LookupError("JAXGAN_NATIVE=0")
  if platform.system() != "Linux" or platform.machine() != "x86_64":
    raise LookupError(f"native extensions are built for Linux x86-64 only, not {platform.system()} "
                      f"{platform.machine()}")
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if cxx is None:
    raise LookupError("no C++ compiler (g++/c++ on PATH or $CXX)")
  return (cxx, *_onednn_paths())


def _build(name: str) -> pathlib.Path:
  cxx, include, libdir, version = _toolchain()
  source = _SOURCES / f"{name}.cc"
  cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w", f"-I{jax.ffi.include_dir()}", f"-I{include}",
         str(source), f"-L{libdir}", "-ldnnl", f"-Wl,-rpath,{libdir}"]
  versions = [version, jax.__version__, importlib.metadata.version("jaxlib")]
  key = hashlib.sha256("\0".join([source.read_text(), *cmd, *versions]).encode()).hexdigest()[:16]
  cache = pathlib.Path(os.environ.get("JAXGAN_NATIVE_CACHE", pathlib.Path.home() / ".cache/jaxgan/native"))
  target = cache / f"{name}-{key}.so"
  if target.exists():
    return target
  cache.mkdir(parents=True, exist_ok=True)
  # Build into a temporary file and rename: concurrent processes (pytest-xdist) never load a partial library.
  # (A name the linker creates, not mkstemp's 0600 file: the library gets the umask's mode, like any output.)
  tmp = str(cache / f".{target.name}.{os.getpid()}.{time.time_ns()}.tmp")
  try:
    start = time.perf_counter()
    proc = subprocess.run(cmd + ["-o", tmp], capture_output=True, text=True)
    if proc.returncode != 0:
      raise LookupError(f"compiling {source.name} failed:\n{proc.stderr[-2000:]}")
    os.replace(tmp, target)
    logging.info("jaxgan.native: built %s in %.1f s -> %s", source.name, time.perf_counter() - start, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return target


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
  """The compiled extension `name` (see the module docstring), or None when it cannot be built."""
  try:
    return ctypes.cdll.LoadLibrary(str(_build(name)))
  except (LookupError, OSError) as e:
    _REASONS[name] = str(e)
    return None


def why_unavailable(name: str) -> str:
  """Why ``load(name)`` returned None ('' if it did not)."""
  load(name)
  return _REASONS.get(name, "")
