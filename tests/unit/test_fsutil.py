"""fsutil, the durability core, on the real filesystem: a write is whole or absent, also when the
writer is killed; a failed write leaves the old file; temp files left by a crash are cleaned up;
moves replace; hardlink, symlink and copy do what they say (and a hardlink across filesystems
becomes a copy)."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from azaion_training import fsutil
from azaion_training.fsutil import (
    TEMP_PREFIX,
    atomic_write_bytes,
    atomic_write_text,
    atomic_writer,
    durable_move,
    fsync_dir,
    link_or_copy,
    make_durable,
    remove_stale_temp_files,
)

SHM = Path("/dev/shm")


def temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_creates_parents_replaces_and_leaves_no_temp_file(tmp_path, durable):
    target = tmp_path / "a" / "b" / "file.txt"
    atomic_write_text(target, "first ✓", durable=durable)
    assert target.read_text(encoding="utf-8") == "first ✓"
    atomic_write_bytes(target, b"second", durable=durable)
    assert target.read_bytes() == b"second"
    assert temp_files(target.parent) == []


def test_atomic_write_mode_follows_the_umask_unless_given(tmp_path):
    default = tmp_path / "default"
    atomic_write_text(default, "x")  # mkstemp creates 0600: the file gets what open() would give it
    assert stat.S_IMODE(default.stat().st_mode) == 0o666 & ~fsutil._UMASK
    private = tmp_path / "private"
    atomic_write_text(private, "x", mode=0o600)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    target = tmp_path / "state.yaml"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_writer(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert temp_files(tmp_path) == []


WRITER = """
import sys
from pathlib import Path
from azaion_training.fsutil import atomic_write_bytes
target, size = Path(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
n = 0
while True:
    n += 1
    atomic_write_bytes(target, bytes([n % 251]) * size)
"""


def test_a_killed_writer_never_leaves_a_partial_file_and_its_temp_files_are_removed(tmp_path):
    target = tmp_path / "big.bin"
    size = 4 * 1024 * 1024
    atomic_write_bytes(target, b"\x00" * size)
    for delay in (0.05, 0.2, 0.4):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(size)], stdout=subprocess.PIPE,
                                  text=True)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        data = target.read_bytes()
        assert len(data) == size and data == data[:1] * size  # one whole version, never a mix or a prefix
    leftovers = temp_files(tmp_path)
    assert remove_stale_temp_files(tmp_path) == len(leftovers)
    assert temp_files(tmp_path) == [] and target.exists()


def test_remove_stale_temp_files_touches_nothing_else_and_tolerates_a_missing_directory(tmp_path):
    (tmp_path / f"{TEMP_PREFIX}abc").write_bytes(b"partial")
    (tmp_path / "keep.txt").write_text("keep")
    (tmp_path / ".hidden").write_text("keep")
    assert remove_stale_temp_files(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "keep.txt"]
    assert remove_stale_temp_files(tmp_path / "missing") == 0


def test_durable_move_replaces_the_target_and_creates_its_directory(tmp_path):
    source = tmp_path / "in" / "x.jpg"
    source.parent.mkdir()
    source.write_bytes(b"new")
    target = tmp_path / "out" / "deep" / "x.jpg"
    durable_move(source, target)
    assert target.read_bytes() == b"new" and not source.exists()
    other = tmp_path / "in" / "y.jpg"
    other.write_bytes(b"newer")
    durable_move(other, target)
    assert target.read_bytes() == b"newer" and not other.exists()


def test_link_or_copy_places_a_hardlink_a_symlink_or_a_copy(tmp_path):
    source = tmp_path / "source.jpg"
    source.write_bytes(b"pixels")
    assert link_or_copy(source, tmp_path / "hard.jpg") == "hardlink"
    assert (tmp_path / "hard.jpg").stat().st_ino == source.stat().st_ino
    assert link_or_copy(source, tmp_path / "soft.jpg", "symlink") == "symlink"
    assert os.readlink(tmp_path / "soft.jpg") == str(source.resolve())
    assert link_or_copy(source, tmp_path / "copy.jpg", "copy") == "copy"
    copy = tmp_path / "copy.jpg"
    assert copy.read_bytes() == b"pixels" and copy.stat().st_ino != source.stat().st_ino
    with pytest.raises(FileExistsError):  # never silently replaces what is there
        link_or_copy(source, tmp_path / "hard.jpg")


@pytest.mark.skipif(not SHM.is_dir() or os.stat(SHM).st_dev == os.stat(Path(__file__)).st_dev,
                    reason="needs /dev/shm on another filesystem")
def test_a_hardlink_across_filesystems_becomes_a_copy(tmp_path):
    source = tmp_path / "source.jpg"
    source.write_bytes(b"pixels")
    if os.stat(tmp_path).st_dev == os.stat(SHM).st_dev:
        pytest.skip("tmp_path is on /dev/shm")
    target = SHM / f"azaion-fsutil-test-{os.getpid()}.jpg"
    try:
        assert link_or_copy(source, target) == "copy"
        assert target.read_bytes() == b"pixels"
    finally:
        target.unlink(missing_ok=True)


@pytest.mark.parametrize("with_syncfs", [True, False])
def test_make_durable_with_and_without_syncfs_tolerates_files_moved_on(tmp_path, monkeypatch, with_syncfs):
    if not with_syncfs:
        monkeypatch.setattr(fsutil, "_LIBC", None)  # a platform without syncfs(2): fsync each file and directory
    written = tmp_path / "written.txt"
    written.write_text("x")
    make_durable(tmp_path, [written, tmp_path / "moved-on.txt"], [tmp_path])
    assert written.read_text() == "x"


def test_fsync_dir_refuses_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "file")
