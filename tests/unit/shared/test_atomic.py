"""Atomic writes leave nothing behind: a write killed midway (SIGKILL) is cleaned up by the next
write in its folder, and one killed between moving the old output aside and putting the new one
in place gets its old output back (issue 11: "Leftovers")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vmad_pipeline.atomic import atomic_directory, atomic_file, clean_leftovers

# A writer process that stops dead (SIGKILL, no cleanup) at a chosen point of the write.
WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import vmad_pipeline.atomic as atomic

    target, point = Path(sys.argv[1]), sys.argv[2]
    if point == "after_swap":  # dies once the old copy is moved aside, before the new is in
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if Path(dst).parent.name.startswith(f".{target.name}.old-"):
                os.kill(os.getpid(), signal.SIGKILL)
        atomic.os.replace = replace
    writer = atomic.atomic_file if point == "file" else atomic.atomic_directory
    with writer(target) as tmp:
        if point == "file":
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
        (tmp / "weights").write_text("new")
        if point == "midway":
            os.kill(os.getpid(), signal.SIGKILL)
    """
)


def killed_write(target: Path, point: str) -> None:
    proc = subprocess.run([sys.executable, "-c", WRITER, str(target), point], timeout=60)
    assert proc.returncode == -signal.SIGKILL


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_sigkill_during_a_directory_write_leaves_a_temporary_the_next_write_removes(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("old")
    killed_write(target, "midway")
    assert leftovers(tmp_path) and (target / "weights").read_text() == "old"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("newer")
    assert leftovers(tmp_path) == [] and (target / "weights").read_text() == "newer"


def test_sigkill_after_the_old_copy_moved_aside_restores_it(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("old")
    killed_write(target, "after_swap")
    assert not target.exists()  # the old copy sits in .ckpt.old-<pid>-*/ckpt
    assert [n for n in leftovers(tmp_path) if ".old-" in n]
    removed = clean_leftovers(tmp_path)  # what the next write does first
    assert removed and leftovers(tmp_path) == []
    assert (target / "weights").read_text() == "old"


NEXT_RUN = "import sys, vmad_pipeline.atomic as a\nwith a.atomic_file(sys.argv[1]) as t: t.write_text('new')"


def test_sigkill_during_a_file_write_leaves_a_temporary_the_next_run_removes(tmp_path):
    target = tmp_path / "cache.json"
    with atomic_file(target) as tmp:
        tmp.write_text("old")
    killed_write(target, "file")
    assert leftovers(tmp_path) and target.read_text() == "old"
    # File writes clean their folder once per process (folders of masks hold thousands).
    subprocess.run([sys.executable, "-c", NEXT_RUN, str(target)], check=True, timeout=60)
    assert leftovers(tmp_path) == [] and target.read_text() == "new"


def test_a_running_writers_temporary_is_left_alone(tmp_path):
    live = tmp_path / f".ckpt.tmp-{os.getppid()}-abc"  # the parent process is alive
    live.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f".ckpt.tmp-{dead.pid}-abc"
    gone.mkdir()
    assert clean_leftovers(tmp_path) == [gone]
    assert live.exists()


@pytest.mark.parametrize("name", [".ckpt.tmp-xyz", ".hidden", ".ckpt.tmp--1-a"])
def test_files_that_are_not_leftovers_are_kept(tmp_path, name):
    (tmp_path / name).write_text("keep")
    assert clean_leftovers(tmp_path) == [] and (tmp_path / name).exists()
