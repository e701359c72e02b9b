"""Helpers the benchmark scripts share: machine facts, the matmul peak, tables and JSON."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def host() -> dict:
    """The CPU (model name, family and model: a VM's model name can be just "AMD EPYC" for several
    generations; the vector flags that change speed), commit and command; torch-free."""
    cpu, flags, ids = platform.processor(), [], {}
    try:
        for line in open("/proc/cpuinfo"):
            key = line.split(":", 1)[0].strip()
            if key == "model name":
                cpu = line.split(":", 1)[1].strip()
            elif key in ("cpu family", "model"):
                ids[key] = line.split(":", 1)[1].strip()
            elif key == "flags":
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx"))]
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=HERE).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                                    cwd=HERE).stdout.strip())
    except OSError:
        commit, dirty = "", False
    if ids:
        cpu += f" (family {ids.get('cpu family', '?')}, model {ids.get('model', '?')})"
    return {"cpu": cpu, "cpu_flags": " ".join(flags), "cpus": os.cpu_count(), "python": platform.python_version(),
            "commit": commit + ("+dirty" if dirty else ""), "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def machine() -> dict:
    """host() plus the torch version and GPU."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {**host(), "gpu": gpu, "torch": torch.__version__}


def gemm_rate(dtype, device: str = "cpu", n: int = 2048, tf32: bool = False) -> float:
    """FLOP/s of an n x n matmul: the machine's matmul rate, the floor every table is held to.

    tf32 lets a CUDA float32 product run on TF32 tensor cores, as cuDNN's recurrent kernels do by
    default (torch.backends.cudnn.allow_tf32): the rate fp32 training on a GPU is held to.
    """
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        return _gemm_rate(torch, dtype, device, n)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _gemm_rate(torch, dtype, device: str, n: int) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    reps = 10 if device == "cpu" else 100
    best = 0.0
    for _ in range(3):  # the best of three: the host's noise only ever slows it down
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t))
    return best


def cold_samples(model, n: int, **options) -> list:
    """`model.samples(n, **options)` as a command draws them: on a fresh row engine, its prefix
    cache empty (a Model keeps its engine warm between calls, so a repeated in-process call would
    step only the prefixes the calls before did not: a program's rate, not a command's)."""
    from chargen.sampling.drawing import run

    return list(run(model.stepper, model.vocab, model.drawings(n, **options)))


def chargen_cmd() -> list[str]:
    """The installed `chargen` command beside this interpreter (a virtual environment's), else on PATH."""
    exe = Path(sys.executable).with_name("chargen")
    return [str(exe)] if exe.exists() else [shutil.which("chargen") or "chargen"]


def compiled(*trees: Path) -> None:
    """Write the bytecode of every module under these folders, as `pip install` does for a user.

    A Python that runs with PYTHONDONTWRITEBYTECODE=1 (as some VMs and CI images do) would otherwise
    compile a tree without bytecode from source at every start: 30-100 ms a command, more for a
    larger tree, which would tilt a comparison of start-ups or of two trees.
    """
    import compileall

    for tree in trees:
        compileall.compile_dir(str(tree), quiet=1)


def installed_package() -> Path:
    """The folder of the `chargen` package this interpreter imports (the command's, for an editable install)."""
    import importlib.util

    return Path(importlib.util.find_spec("chargen").origin).parent


def run_measured(cmd: list[str], env: dict | None = None, capture: bool = True):
    """Run a child process: (CompletedProcess, wall seconds, its own peak RSS in MB).

    os.wait4 gives the child's resource usage (subprocess.run would reap it first). stderr goes
    to a temp file so a chatty child cannot fill a pipe and stall; a failure ends the benchmark.
    """
    import tempfile

    with tempfile.TemporaryFile() as err_file:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=err_file,
                                env=env)
        out = proc.stdout.read() if capture else b""
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        err_file.seek(0)
        err = err_file.read()
    done = subprocess.CompletedProcess(cmd, os.waitstatus_to_exitcode(status), out, err)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode(errors='replace')[-2000:]}")
    return done, wall, usage.ru_maxrss / 1024


def read_list(lists: Path, source: str) -> list[str]:
    """The lines of a list benchmarks/finetune_lists.py built (bench-out/lists/SOURCE.txt)."""
    path = lists / f"{source}.txt"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run python benchmarks/finetune_lists.py first")
    return path.read_text(encoding="utf-8").splitlines()


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")  # (a regex's [a-z] is not markup)
    for i, col in enumerate(columns):
        table.add_column(escape(col), justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*(escape(c) for c in r))
    Console(width=160).print(table)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
