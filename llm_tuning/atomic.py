"""Write a whole output folder or file or nothing: build it in a temporary sibling, then rename it into place."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .cli import UserError

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and (err.errno in DISK_FULL_ERRNOS or "No space left on device" in str(err))


def disk_full_error(target: Path) -> UserError:
    return UserError(f"the disk is full (no space left on device) while writing {target}; nothing was changed "
                     f"there, so free some space and run again")


@contextlib.contextmanager
def atomic_directory(out_dir: str | Path) -> Iterator[Path]:
    """`with atomic_directory(out) as tmp:` write into `tmp`; on success it replaces `out` (an old
    `out` is removed only after the new one is in place); on any error `tmp` is deleted."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp_dir.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp_dir
        if out_dir.exists():
            old_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old_dir / out_dir.name)
            os.replace(tmp_dir, out_dir)
            shutil.rmtree(old_dir)
        else:
            os.replace(tmp_dir, out_dir)
    except BaseException as err:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if is_disk_full(err):
            raise disk_full_error(out_dir) from None
        raise


@contextlib.contextmanager
def atomic_files(out_dir: str | Path, tmp_name: str = ".saving", writer: bool = True) -> Iterator[Path]:
    """`with atomic_files(out) as tmp:` write files into `tmp` (inside `out`); on success each one
    is renamed into `out`, replacing the file of that name, and the rest of `out` (checkpoints,
    logs) stays; on any error `tmp` is deleted and `out` is as it was. Renames need no space, so a
    full disk can only strike while `tmp` is written. `tmp_name` is fixed, so every process of a
    distributed run names the same folder; only the `writer` (process zero) prepares and renames."""
    out_dir = Path(out_dir)
    tmp_dir = out_dir / tmp_name
    if not writer:
        yield tmp_dir
        return
    shutil.rmtree(tmp_dir, ignore_errors=True)  # left by a run that was killed while saving
    tmp_dir.mkdir(parents=True)
    try:
        yield tmp_dir
        for written in sorted(tmp_dir.iterdir()):
            target = out_dir / written.name
            if written.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(written, target)
        tmp_dir.rmdir()
    except BaseException as err:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if is_disk_full(err):
            raise disk_full_error(out_dir) from None
        raise


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write rows as jsonl through a temporary file, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(err):
            raise disk_full_error(path) from None
        raise
    return path
