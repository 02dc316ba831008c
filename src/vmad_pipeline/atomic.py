"""Atomic writes: build next to the target, then swap it in with renames.

A reader sees the old output or the new one, never half of either. Temporary names carry the
writer's process id (``.<name>.tmp-<pid>-<random>``, ``.<name>.old-<pid>-<random>``), so a write
that was killed midway (SIGKILL, power loss) is recognised by the next directory write in the same
folder, or the next process's first file write there: its leftovers are removed, and if it died between moving the old copy aside and putting the new
one in place, the old copy is put back first. Leftovers of a writer that is still running are
left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def _prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


_LEFTOVER = re.compile(r"^\.(?P<target>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-")
_cleaned: set[tuple[int, str]] = set()  # (pid, folder) already cleaned by this process


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries and old copies that dead writers left in ``folder``; when one died
    after moving an old output aside and before putting the new one in place, move the old one
    back first. Returns what was removed."""
    folder = Path(folder)
    removed = []
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if e.name.startswith(".")]
    for name in sorted(names):
        match = _LEFTOVER.match(name)
        if match is None or _alive(int(match["pid"])):
            continue
        path, target = folder / name, folder / match["target"]
        kept = path / target.name  # an old copy, moved aside whole
        if match["kind"] == "old" and kept.exists() and not target.exists():
            os.replace(kept, target)
            log.warning("restored %s from a write that was killed midway", target)
        _remove(path)
        removed.append(path)
    if removed:
        log.warning("removed %d leftover(s) of killed writes in %s", len(removed), folder)
    return removed


def _prepare(target: Path, *, every_time: bool) -> None:
    """Make the folder and clean it: before every directory write (checkpoints, exports: few
    writes, small folders), and before the first file write of this process in a folder (masks,
    reply caches: thousands of files in one folder would be listed once per file otherwise)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    key = (os.getpid(), str(target.parent.resolve()))
    if every_time or key not in _cleaned:
        clean_leftovers(target.parent)
        _cleaned.add(key)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block succeeds.

    The new tree is written next to ``target`` and swapped in; an existing ``target`` is
    removed only after the new one is in place. On any error the temporary directory is
    removed and ``target`` is left (or put back) as it was, so a crash never leaves a
    half-written checkpoint or dataset behind; what a killed write left is cleaned up by the
    next write in its folder (:func:`clean_leftovers`).
    """
    target = Path(target)
    _prepare(target, every_time=True)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(target, "tmp"), dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the artifact is not
    old: Path | None = None
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=_prefix(target, "old"), dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists() and (old / target.name).exists():
            os.replace(old / target.name, target)  # put the previous tree back
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target`` that replaces it (a rename) only if the block
    succeeds: readers see the old file or the new one, never a partial one. The one place for
    single-file atomic writes (JSON, parquet, PNG)."""
    target = Path(target)
    _prepare(target, every_time=False)
    fd, name = tempfile.mkstemp(prefix=_prefix(target, "tmp"), suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes it private; the file is not
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically (:func:`atomic_file`)."""
    with atomic_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
