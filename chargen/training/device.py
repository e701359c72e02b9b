"""Where and in what precision training runs: the device, and bf16/fp16 autocast where it helps."""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Optional

import torch

from ..config import ModelConfig
from ..errors import ModelTooLarge, TrainingError, UsageError
from ..model import CharRNN


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; a named device that is absent is a UsageError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("`device` cuda was asked for, but torch sees no CUDA GPU")
    if name == "mps" and not _mps_available():
        raise UsageError("`device` mps was asked for, but torch sees no Apple GPU")
    return torch.device(name)


# Bytes each parameter holds while training, at the least: its float32 weight and gradient, Adam's
# two moments, and the copy of weight and moments kept to roll back to (loop.DivergenceGuard).
TRAIN_BYTES_PER_PARAMETER = 4 * 7
SMALLER = "make the model smaller (--hidden, --layers)"


def free_memory(device: torch.device, root: str = "/") -> Optional[int]:
    """Bytes free to train in on `device`: the GPU's free memory; on a Linux host its MemAvailable
    and free swap (the check refuses what cannot run, not what would run slowly), or less where
    the process's cgroup (a container's memory limit) leaves less; None where it is not known
    (macOS, MPS). `root`: where /proc and /sys are (a test's tree)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    free = None
    try:
        with open(os.path.join(root, "proc/meminfo")) as f:
            fields = {k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in f) if v.strip()}
        free = fields["MemAvailable"] + fields.get("SwapFree", 0) if "MemAvailable" in fields else None
    except (OSError, ValueError):
        pass
    headroom = _cgroup_headroom(root)
    return free if headroom is None else headroom if free is None else min(free, headroom)


def _cgroup_headroom(root: str) -> Optional[int]:
    """The bytes the process's memory cgroup allows beyond what it uses (cgroup v2's memory.max,
    or v1's limit_in_bytes), looked for at its own path and at the hierarchy's root (a container
    sees its own cgroup there); None where no limit is set or none can be read."""
    try:
        with open(os.path.join(root, "proc/self/cgroup")) as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
    except OSError:
        return None
    for _, controllers, path in entries:
        if controllers == "":
            base, files = os.path.join(root, "sys/fs/cgroup"), ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base, files = os.path.join(root, "sys/fs/cgroup/memory"), ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        for folder in (os.path.join(base, path.lstrip("/")), base):
            try:
                limit, used = (_read(os.path.join(folder, name)) for name in files)
                if limit == "max" or int(limit) >= 1 << 60:  # (v1 writes "no limit" as about 2**63)
                    break
                return max(0, int(limit) - int(used))
            except (OSError, ValueError):
                continue
    return None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def check_fits(config: ModelConfig, device: torch.device, resuming: bool = False) -> None:
    """A model whose weights and optimizer state alone exceed the device's free memory is a
    ModelTooLarge error before any of it is allocated: a typo such as --hidden 200000 would
    otherwise fail deep in torch's allocator, or in the kernel's OOM killer minutes in. (`resuming`:
    the shape is the run's, so the advice is where to resume it.)"""
    need, free = config.parameters * TRAIN_BYTES_PER_PARAMETER, free_memory(device)
    if free is not None and need > free:
        advice = "resume it where more memory is free" if resuming else SMALLER
        raise ModelTooLarge(f"a {config.layers}x{config.hidden} {config.cell} ({config.parameters:,} parameters) needs "
                            f"at least {_gigabytes(need)} to train (weights, gradients and optimizer state), and "
                            f"{device.type} has {_gigabytes(free)} free: {advice}")


@contextmanager
def out_of_memory_reported(device: torch.device, error: type[TrainingError] = TrainingError) -> Iterator[None]:
    """An allocation that fails while training (the activations of a large batch, a GPU shared with
    others) is one `error` naming what to shrink, not torch's traceback; the checkpoints already
    written stay. (The timing of a shape raises ModelTooLarge: the automatic sizes stop there.)"""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        text = str(exc).lower()
        if not isinstance(exc, MemoryError) and "out of memory" not in text and "can't allocate memory" not in text:
            raise
        raise error(f"out of memory on {device.type} while training: {SMALLER}, or its batch "
                    "(--batch-size, --seq-len)") from None


def _gigabytes(n: int) -> str:
    return f"{n / 2**30:,.1f} GB"


def cpu_has_bf16_matmul() -> bool:
    """AVX512-BF16 or AMX: the CPU has bf16 matrix units, where bf16 autocast about doubles speed."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device, notice: Callable[[str], None],
                      model_config: Optional[ModelConfig] = None) -> str:
    """The precision to train in: as asked, or what `auto` finds best here; a one-line notice
    and fp32 where the asked one cannot work (and where a quick trial step fails)."""
    hidden = model_config.hidden if model_config is not None else 256
    auto = name == "auto"
    if auto:
        name = _auto_precision(device, hidden)
        if name == "fp32":
            return name
    else:
        refused = _unsupported(name, device)
        if refused is not None:
            notice(refused)
            return "fp32"
    if name != "fp32":
        problem = precision_problem(device, name, model_config.cell if model_config is not None else "lstm")
        if problem is not None:
            if not auto:
                notice(f"{name} does not work here ({problem}); training in fp32")
            return "fp32"
    return name


def _auto_precision(device: torch.device, hidden: int) -> str:
    if device.type == "cuda":
        # Ampere and later have bf16 tensor cores (and bf16 needs no loss scaling), but there cuDNN
        # also runs fp32 recurrences in TF32 on the same cores. Measured on an H200 (docs/benchmarks.md,
        # "The CUDA path"): fp32 trains hidden 128-512 as fast as bf16 or faster (1.0-1.35x), and
        # bf16 is 1.3x faster from hidden 1024.
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 and hidden >= 1024 else "fp32"
    if device.type == "cpu":
        # Measured (docs/benchmarks.md): on an AMX Xeon bf16 is 1.3x fp32 at hidden 128 and about
        # 2x from 256 up; on an AVX512-BF16 EPYC without AMX (Zen 4) 1.2-1.5x at 128 and 1.5-2.1x
        # from 256; smaller models are bound by element-wise work, not matmuls.
        return "bf16" if cpu_has_bf16_matmul() and hidden >= 128 else "fp32"
    return "fp32"


def _unsupported(name: str, device: torch.device) -> Optional[str]:
    """Why an explicitly asked precision is not used on this device (None: try it)."""
    if name == "fp16" and device.type != "cuda":
        return (f"fp16 is only used on CUDA (with a gradient scaler); training in fp32 on {device.type}; "
                f"try --precision bf16")
    if name == "bf16" and device.type == "mps":
        return "bf16 autocast is not supported on MPS here; training in fp32"
    if name == "bf16" and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        return "this GPU has no bf16 tensor cores (compute capability < 8.0); training in fp32; try --precision fp16"
    return None


def precision_problem(device: torch.device, precision: str, cell: str) -> Optional[str]:
    """One tiny forward and backward step of the recurrent cell under the autocast; why it failed, if it did."""
    try:
        probe = CharRNN(ModelConfig(vocab_size=4, cell=cell, layers=1, hidden=8, embed=4)).to(device)
        x = torch.zeros(2, 3, dtype=torch.long, device=device)
        with autocast(device, precision):
            logits, _ = probe(x)
        loss = logits.float().sum()
        loss.backward()
        if not torch.isfinite(loss):
            return "a trial step gave a non-finite loss"
        return None
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
