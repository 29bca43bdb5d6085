"""Atomic output folders: write into a temporary folder next to the target, rename it into place at
the end. A crash, Ctrl-C or SIGTERM never leaves a half-written folder, and an existing folder is
replaced only on request (``overwrite``) and only once the new one is complete.

Every lens_bias writer of a folder (run folders, experiment folders, exported models, the model
cache) goes through :func:`atomic_out`.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import RunError


@contextmanager
def signals_deferred(signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold SIGINT / SIGTERM for the duration of the block (renames and clean-up must not be cut in
    half); a signal that arrived meanwhile is delivered again, to the original handler, at the end
    (Ctrl-C then raises KeyboardInterrupt as usual). Only signals handled in Python are held (the
    default SIGINT handler is; the ``lens-bias`` commands that write folders handle SIGTERM too).
    Does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {}
    for sig in signums:
        if callable(signal.getsignal(sig)):  # only Python handlers (SIG_DFL / SIG_IGN stay as they are)
            old[sig] = signal.signal(sig, lambda n, _frame: got.append(n))
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if got:
            signal.raise_signal(got[0])


def prepare_out(out: Path, overwrite: bool) -> Path:
    """Refuse an existing output folder unless ``overwrite``; return a fresh temporary folder
    next to it (renamed into place by :func:`finish_out`)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise RunError(f"output folder {out} already exists; pass --overwrite to replace it or choose "
                       "another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def _publish_modes(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder; the run folder is meant to be shared like any output."""
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def finish_out(tmp: Path, out: Path, overwrite: bool = True) -> None:
    """Rename the finished temporary folder ``tmp`` to ``out``. An existing ``out`` is moved
    aside first and deleted only once ``tmp`` is in place (put back if the rename fails); without
    ``overwrite``, an ``out`` that appeared while the job ran is refused, not replaced."""
    _publish_modes(tmp)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise RunError(f"output folder {out} appeared while the run was going; pass --overwrite to "
                           "replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent)) / out.name
        out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            old.rename(out)
            raise
        _remove(old.parent)
    else:
        tmp.rename(out)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_out(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """``with atomic_out(out) as tmp:`` write into ``tmp``; on success it becomes ``out``. On any
    exception, Ctrl-C or SIGTERM, ``tmp`` is deleted and ``out`` is left as it was: never a half
    folder. Creating, renaming and deleting the folder are shielded from signals."""
    out = Path(out)
    with signals_deferred():
        tmp = prepare_out(out, overwrite)
    try:
        yield tmp
        with signals_deferred():
            finish_out(tmp, out, overwrite)
    except BaseException:
        with signals_deferred():
            _remove(tmp)
        raise
