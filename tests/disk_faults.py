"""Disk faults at the file-write seam, for tests that need no privilege: a full disk, a read-only one.

Every file ems writes (store segments and registrations, the spool, the dead-letter
file) is opened with Python's ``open`` (``builtins.open`` / ``io.open``, which
``pathlib`` uses) and written through the file object it returns. :class:`DiskFaults`
wraps that seam for paths below one directory:

* ``full``: opening works (a full disk still has inodes), every ``write`` raises
  ``OSError(ENOSPC)``, as the kernel does on a full file system;
* ``read_only``: opening for writing, renaming, removing and creating directories raise
  ``OSError(EROFS)``, as on a file system remounted read-only;
* ``None``: the disk is fine again.

Reads are never touched. A real full disk (a small tmpfs) is in
``tests/test_ingest_adversary.py::test_case07_real_disk_full_on_a_tmpfs`` (root only).
``install_from_env`` lets a subprocess (``tests/chaos_ingest.py``) take its mode from a
control file the test rewrites.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import time
from pathlib import Path
from typing import Any

_WRITE_MODES = ("w", "a", "x", "+")


class _Proxy:
    """A file object whose writes fail while its :class:`DiskFaults` says the disk is full."""

    def __init__(self, f: Any, faults: DiskFaults) -> None:
        self._f = f
        self._faults = faults

    def write(self, data: Any) -> int:
        self._faults.check_write()
        n: int = self._f.write(data)
        return n

    def writelines(self, lines: Any) -> None:
        self._faults.check_write()
        self._f.writelines(lines)

    def flush(self) -> None:
        self._f.flush()

    def __enter__(self) -> _Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __iter__(self) -> Any:
        return iter(self._f)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class DiskFaults:
    """Make writes below ``root`` fail (see module docs); :meth:`install` / :meth:`uninstall`."""

    def __init__(self, root: Path, control: Path | None = None) -> None:
        self.root = str(Path(root).resolve())
        self.control = control
        self._mode: str | None = None
        self._read_at = 0.0
        self.injected = 0
        self._saved: dict[str, Any] = {}

    @property
    def mode(self) -> str | None:
        if self.control is not None:
            now = time.monotonic()
            if now - self._read_at > 0.02:  # read the control file at most every 20 ms
                try:
                    text = self.control.read_bytes().decode().strip()
                except OSError:
                    text = ""
                self._mode, self._read_at = text or None, now
        return self._mode

    @mode.setter
    def mode(self, value: str | None) -> None:
        assert value in (None, "full", "read_only"), value
        self._mode = value

    def _below(self, path: Any) -> bool:
        if isinstance(path, int):
            return False
        try:
            p = os.path.abspath(os.fspath(path))
        except TypeError:
            return False
        return p == self.root or p.startswith(self.root + os.sep)

    def check_write(self) -> None:
        if self.mode == "full":
            self.injected += 1
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        if self.mode == "read_only":
            self.injected += 1
            raise OSError(errno.EROFS, "Read-only file system (injected)")

    def _check_change(self, *paths: Any) -> None:
        if self.mode == "read_only" and any(self._below(p) for p in paths):
            self.injected += 1
            raise OSError(errno.EROFS, "Read-only file system (injected)")

    # ---------------------------------------------------------------- install

    def install(self) -> DiskFaults:
        real_open = io.open
        real = {n: getattr(os, n) for n in ("replace", "rename", "unlink", "mkdir", "remove")}
        self._saved = {"open": real_open, **real}
        faults = self

        def fault_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            writing = any(c in mode for c in _WRITE_MODES)
            if writing and faults._below(file):
                faults._check_change(file)
                return _Proxy(real_open(file, mode, *args, **kwargs), faults)
            return real_open(file, mode, *args, **kwargs)

        def changer(name: str) -> Any:
            fn = real[name]

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                faults._check_change(*args[:2])
                return fn(*args, **kwargs)

            return wrapped

        builtins.open = fault_open
        io.open = fault_open
        for name in real:
            setattr(os, name, changer(name))
        return self

    def uninstall(self) -> None:
        if not self._saved:
            return
        builtins.open = self._saved["open"]
        io.open = self._saved["open"]
        for name in ("replace", "rename", "unlink", "mkdir", "remove"):
            setattr(os, name, self._saved[name])
        self._saved = {}

    def __enter__(self) -> DiskFaults:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()
