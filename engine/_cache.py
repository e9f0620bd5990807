"""Where compiled kernels are kept between runs: one per-user directory, set in one place.

Numba compiles the CPU kernels (``cache=True``) once and keeps the machine code on disk. By
default it writes next to the source, i.e. into ``site-packages``: a later ``pip uninstall``
then leaves ``site-packages/engine/__pycache__`` behind as an empty namespace package that
shadows a new install (issue 15). So parity points Numba at a per-user cache directory:

1. ``NUMBA_CACHE_DIR``, when the user set it (respected as is);
2. else ``$PARITY_CACHE_DIR/numba``;
3. else the platform's user cache directory (the ``platformdirs`` rule: ``$XDG_CACHE_HOME``
   or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows)
   ``/parity/numba``;
4. a per-user directory under the system's temporary directory when that one cannot be
   written.

:func:`configure` runs when ``engine`` is first imported (``engine/__init__.py``; ``kernels``
imports ``engine`` first), before any module that compiles is imported. It imports nothing
heavy: Numba reads ``NUMBA_CACHE_DIR`` when it is imported, and when it already was (a
program imported it before parity), its config attribute is set too; either way before the
first ``@njit(cache=True)`` function is defined, which is when Numba picks the directory.

:func:`announce_compiles` prints one line to stderr the first time a process compiles one of
parity's kernels (a cold cache: a new install, a new Numba, an edited kernel), so the pause
of the first run is explained; a warm cache compiles nothing and prints nothing.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from pathlib import Path

#: The packages whose compilations are announced.
_OWN = ("engine", "kernels")

_lock = threading.Lock()
_listening = False
_announced = False
#: Functions of parity compiled by this process (not loaded from the cache), by qualified name.
compiled: list[str] = []


def user_cache_dir() -> Path:
    """The platform's per-user cache directory for parity (not created).

    The rule of ``platformdirs.user_cache_dir("parity")``, without the dependency.
    """
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "parity" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "parity"
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    if not base or not os.path.isabs(base):
        base = str(Path.home() / ".cache")
    return Path(base) / "parity"


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def numba_cache_dir() -> Path:
    """The directory Numba's cache should use (rules 1-4 of the module docstring)."""
    own = os.environ.get("NUMBA_CACHE_DIR", "").strip()
    if own:
        return Path(own)
    root = os.environ.get("PARITY_CACHE_DIR", "").strip()
    path = (Path(root) if root else user_cache_dir()) / "numba"
    if _writable(path):
        return path
    try:
        user = str(os.getuid())  # type: ignore[attr-defined]
    except AttributeError:  # Windows
        user = os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"parity-{user}" / "numba"


def configure() -> Path:
    """Point Numba's cache at :func:`numba_cache_dir`; idempotent, cheap, imports nothing.

    Returns the directory.
    """
    path = numba_cache_dir()
    os.environ["NUMBA_CACHE_DIR"] = str(path)  # read by numba when it is imported (and by child processes)
    config = sys.modules.get("numba.core.config")
    if config is not None and getattr(config, "CACHE_DIR", None) != str(path):
        config.CACHE_DIR = str(path)  # numba was imported before parity
    return path


def _on_compile(event) -> None:
    """Record parity's compilations and announce the first (a ``numba:compile`` start)."""
    global _announced
    dispatcher = (event.data or {}).get("dispatcher")
    func = getattr(dispatcher, "py_func", None)
    module = getattr(func, "__module__", "") or ""
    if module.split(".")[0] not in _OWN:
        return
    with _lock:
        compiled.append(f"{module}.{func.__qualname__}")
        if _announced:
            return
        _announced = True
    print(
        "parity: compiling the CPU kernels for this machine, once "
        f"(cached in {os.environ.get('NUMBA_CACHE_DIR', '')}; later runs skip this)",
        file=sys.stderr,
        flush=True,
    )


def announce_compiles() -> None:
    """Listen for compilations (once per process); called by each module that compiles.

    Imports numba, so only modules that import it anyway call it.
    """
    global _listening
    with _lock:
        if _listening:
            return
        _listening = True
    from numba.core import event

    class _Listener(event.Listener):
        def on_start(self, ev) -> None:
            _on_compile(ev)

        def on_end(self, ev) -> None:
            pass

    event.register("numba:compile", _Listener())
