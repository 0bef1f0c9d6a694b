"""Directories that appear whole or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(out: Path):
    """Yield a temporary sibling of ``out`` to fill; on success it replaces ``out``.

    An existing ``out`` is moved aside before the rename, so ``out`` is never
    half-replaced; on any error (Ctrl-C and SIGTERM included, when SIGTERM is
    turned into an exception as the CLI does) the temporary directory is removed
    and ``out`` is left as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:  # from the moment it exists: a signal in the next lines must not leave it behind
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
        yield tmp
        if out.exists():
            _swap(tmp, out)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(new: Path, out: Path) -> None:
    """Replace the directory ``out`` with ``new``; interrupted, ``out`` is the old or the new one."""
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    try:
        os.replace(out, old / out.name)
        os.replace(new, out)
    except BaseException:
        if not out.exists() and (old / out.name).exists():
            os.replace(old / out.name, out)  # stopped between the two renames: put it back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
