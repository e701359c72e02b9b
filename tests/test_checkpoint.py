"""Checkpoints: atomic, loadable without torch, and every defect a clear CheckpointError."""

import json
import os
import pickle
import re
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from chargen.checkpoint import BEST, FORMAT_VERSION, LAST, read_checkpoint
from chargen.errors import CheckpointError, WriteError
from chargen.files import atomic_write


def _rewrite(src: Path, dst: Path, *, metadata=None, drop=None, reshape=None):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(src), framework="numpy") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(metadata or {})
    if drop:
        tensors.pop(drop)
    if reshape:
        tensors[reshape] = np.zeros((3, 3), np.float32)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_run_directory_resolves_to_best_and_last(trained_names):
    best = read_checkpoint(trained_names)
    assert best.path.name == BEST and best.resume is None
    last = read_checkpoint(trained_names, prefer=LAST, with_resume=True)
    assert last.path.name == LAST and last.resume["step"] == 150
    assert best.line_oriented and best.training_lines and "\n" in best.vocab


def test_a_runs_other_files_given_as_a_checkpoint_say_what_to_pass(trained_names, tmp_path):
    """A run's config.json or curve passed for a checkpoint: the error says to pass the run; a
    stray file elsewhere gets no such hint."""
    for name in ("config.json", "metrics.jsonl"):
        with pytest.raises(CheckpointError, match=f"not a safetensors file.*; pass its run directory {re.escape(str(trained_names))} "):
            read_checkpoint(Path(trained_names) / name)
    stray = tmp_path / "config.json"
    stray.write_text("{}")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(stray)
    assert "run directory" not in str(info.value)


def test_loading_does_not_import_torch(trained_names):
    code = ("import sys, chargen; m = chargen.load(sys.argv[1]); m.sample(n=2, seed=1); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code, str(trained_names)], check=True)


def _malicious_pickle(marker: Path) -> bytes:
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Boom())


def _malicious_torch_zip(marker: Path, path: Path) -> Path:
    import torch

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Boom()}, path)
    return path


def test_code_in_a_pickle_never_runs(tmp_path, trained_names):
    marker = tmp_path / "PWNED"
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(_malicious_pickle(marker))
    zipped = _malicious_torch_zip(marker, tmp_path / "evil.pt")
    assert not marker.exists()
    for bad in (plain, zipped):
        with pytest.raises(CheckpointError, match="never unpickles"):
            read_checkpoint(bad)
        # also where a run directory's files are expected, for sampling and for resuming
        run = tmp_path / f"run-{bad.suffix[1:]}"
        run.mkdir()
        (run / BEST).write_bytes(bad.read_bytes())
        (run / LAST).write_bytes(bad.read_bytes())
        with pytest.raises(CheckpointError):
            read_checkpoint(run)
        with pytest.raises(CheckpointError):
            read_checkpoint(run, prefer=LAST, with_resume=True)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "empty"),
        (b"hello, I am a text file\n", "not a safetensors file"),
        (os.urandom(4096), None),
        (b"PK\x03\x04" + os.urandom(100), "zip"),
        (b"PK\x03\x04" + bytes(4) + b"{" + os.urandom(100), "zip"),  # a zip whose ninth byte looks like a header
    ],
)
def test_garbage_files(tmp_path, content, needle):
    p = tmp_path / "x.safetensors"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=needle):
        read_checkpoint(p)


def test_a_checkpoint_in_a_pipe_is_called_a_pipe_not_corrupt(tmp_path, trained_names):
    """`-c <(ssh host cat best.safetensors)` names a pipe: its first bytes, read to sniff it, would
    be gone, and it has no size; it once was "truncated or corrupt"."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: _write_ignoring_a_closed_reader(fifo, (trained_names / BEST).read_bytes()))
    writer.start()
    with pytest.raises(CheckpointError, match="is a pipe or a device, not a file"):
        read_checkpoint(fifo)
    writer.join()
    with pytest.raises(CheckpointError, match="/dev/null is a pipe or a device"):
        read_checkpoint("/dev/null")


def _write_ignoring_a_closed_reader(path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except BrokenPipeError:
        pass


def test_a_zip_that_is_not_torch(tmp_path):
    p = tmp_path / "x.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CheckpointError, match="zip"):
        read_checkpoint(p)


def test_a_header_length_that_looks_like_a_pickle_opcode(tmp_path, trained_names):
    """Header lengths of 128..255 (mod 256) start the file with the pickle byte 0x80."""
    from safetensors.numpy import save_file

    for pad in range(0, 300, 7):
        p = tmp_path / f"ok{pad}.safetensors"
        save_file({"w": np.zeros(3, np.float32)}, str(p), metadata={"x": "y" * pad})
        with pytest.raises(CheckpointError, match="not a chargen checkpoint \\(no chargen metadata"):
            read_checkpoint(p)


def test_truncated(tmp_path, trained_names):
    data = (trained_names / BEST).read_bytes()
    for cut in (4, 20, len(data) // 2, len(data) - 1):
        p = tmp_path / f"t{cut}.safetensors"
        p.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            read_checkpoint(p)


def test_header_that_lies(tmp_path, trained_names):
    data = bytearray((trained_names / BEST).read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    name = "head.bias"
    header[name]["data_offsets"] = [0, 10**12]
    raw = json.dumps(header).encode()
    p = tmp_path / "lies.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(data[8 + n :]))
    with pytest.raises(CheckpointError):
        read_checkpoint(p)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 10**15) + b"{}")
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(huge)


def test_not_chargen_future_version_bad_metadata_missing_and_misshapen(tmp_path, trained_names):
    from safetensors.numpy import save_file

    src = trained_names / BEST
    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(plain))
    cases = [
        (plain, "not a chargen checkpoint"),
        (_rewrite(src, tmp_path / "future.safetensors", metadata={"format_version": str(FORMAT_VERSION + 1)}), "newer"),
        (_rewrite(src, tmp_path / "badjson.safetensors", metadata={"model_config": "{oops"}), "not JSON"),
        (_rewrite(src, tmp_path / "badcfg.safetensors", metadata={"model_config": json.dumps({"vocab_size": 3, "bogus": 1})}), "bogus"),
        (_rewrite(src, tmp_path / "badvocab.safetensors", metadata={"vocab": "[]"}), "vocabulary"),
        (_rewrite(src, tmp_path / "missing.safetensors", drop="head.bias"), "lacks the tensor"),
        (_rewrite(src, tmp_path / "shape.safetensors", reshape="head.weight"), "shape"),
    ]
    for path, needle in cases:
        with pytest.raises(CheckpointError, match=needle):
            read_checkpoint(path)


def test_atomic_write_keeps_the_old_file_when_the_directory_is_read_only(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    target = tmp_path / "f.bin"
    atomic_write(target, b"old")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(WriteError, match="intact"):
            atomic_write(target, b"new")
    finally:
        tmp_path.chmod(0o700)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_write_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write(target, b"old")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(WriteError, match="No space left"):
        atomic_write(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_write_through_a_link_keeps_the_link_and_a_pipe_is_written_in_place(tmp_path):
    """`export --js site/model.js`, a link into a build folder: the file it names is replaced, the
    link stays (a rename over the link dropped it). `--js /dev/stdout` (a link to a pipe or a
    terminal) cannot be replaced: as root the temp file and the rename in /dev replaced the link."""
    (tmp_path / "build").mkdir()
    real = tmp_path / "build" / "model.js"
    real.write_bytes(b"old")
    link = tmp_path / "model.js"
    link.symlink_to(real)
    atomic_write(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "model.js"]  # no temp file left
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = tmp_path / "stdout"
    out.symlink_to(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    atomic_write(out, b"through the pipe")
    reader.join(timeout=10)  # (a write that replaced the link leaves the reader waiting)
    assert got == [b"through the pipe"] and out.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "fifo", "model.js", "stdout"]
