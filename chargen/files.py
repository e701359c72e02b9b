"""Writing files so that a crash at any moment leaves the old file or the new one, never a torn one.

Every file chargen writes (checkpoints, metrics, loss curves, exported tokenizers, the corpus
cache) goes through `atomic_writer`: a temp file in the same directory, fsync, rename over the
target, fsync the directory. Temp files are named `.<name>.<random>.tmp`, so a reader of a run
directory or of the cache can recognise (and remove) those a killed process left behind. A
symbolic link stays a link: the file it names is replaced. A target that is no file (a pipe, a
device: `--js /dev/stdout`) cannot be replaced, and is written in place. `stamp` says whether a
file read before is the same file now.
"""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import WriteError


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file; when the block ends without an exception, it replaces `path` whole.

    If writing fails (disk full, read-only directory) the temp file is removed, the old file
    stays, and a WriteError says so; any other exception also removes the temp file and leaves
    `path` untouched.
    """
    if _not_a_file(path):
        with _written_in_place(path) as f:
            yield f
        return
    given, path = Path(path), Path(os.path.realpath(path))  # (through a link: the file it names; renaming
    tmp_name = None  # over the link would drop it)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        fsync_dir(path.parent)
    except OSError as exc:
        raise WriteError(given, exc.strerror or str(exc)) from None
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def _not_a_file(path: str | os.PathLike) -> bool:
    """Whether `path` (after its links) is a pipe, a device or a socket: something to write to, not replace."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextmanager
def _written_in_place(path: str | os.PathLike) -> Iterator[BinaryIO]:
    try:
        with open(path, "wb") as f:
            yield f
    except OSError as exc:
        raise WriteError(Path(path), exc.strerror or str(exc)) from None


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` atomically (see atomic_writer)."""
    with atomic_writer(path) as f:
        f.write(data)


def stamp(path: str | os.PathLike) -> tuple[int, int]:
    """A file's size and modification time: "unchanged", as make and rsync judge it (the corpus
    cache's sources, a Model sent to another process). OSError where there is none."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: directories cannot be opened; rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
