"""Optional dependencies: what each extra brings, and the one-line error when one is missing.

The base install samples, scores, describes and exports with numpy alone. Training (and the
torch sampling backend) needs the `train` extra, PyTorch; `chargen serve` the `serve` extra,
Starlette and uvicorn.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from urllib.parse import unquote, urlparse

from .errors import MissingExtra

CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def install_command(extra: str) -> str:
    """The pip command that adds `extra` to this install: from the folder it was installed from
    (a clone: `pip install '/path/to/chargen[train]'`), else from the package index."""
    from importlib.metadata import distribution  # here: importing it costs every command ~15 ms of start-up

    try:
        direct = json.loads(distribution("chargen").read_text("direct_url.json") or "null")
    except Exception:  # not installed (run from a source tree), or metadata unreadable
        direct = None
    if isinstance(direct, dict) and "dir_info" in direct and str(direct.get("url", "")).startswith("file://"):
        return f"pip install '{unquote(urlparse(direct['url']).path)}[{extra}]'"
    return f"pip install 'chargen[{extra}]'"


# A Linux GPU that torch can use shows one of these device files (NVIDIA's, AMD's ROCm, WSL's);
# with none of them, no import of torch (a second and 200 MB) is needed to know there is no GPU.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def gpu_present() -> bool:
    """Whether PyTorch is installed and sees a GPU (CUDA or Apple's). It may import torch: ask
    only where a device was left to choose (`--device auto`)."""
    if importlib.util.find_spec("torch") is None:
        return False
    if sys.platform.startswith("linux") and not any(os.path.exists(f) for f in GPU_DEVICE_FILES):
        return False
    from .training.device import resolve_device

    return resolve_device("auto").type != "cpu"


def require_torch(what: str) -> None:
    """A MissingExtra naming the install command unless PyTorch can be imported."""
    if importlib.util.find_spec("torch") is None:
        raise MissingExtra(
            f"{what} needs PyTorch, which is not installed; add it with: {install_command('train')} "
            f"(on a machine without an NVIDIA GPU, first get the CPU build, gigabytes smaller: {CPU_TORCH})"
        )


def require_serve() -> None:
    """A MissingExtra naming the install command unless the ASGI stack (`serve` extra) is installed."""
    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(f"chargen serve needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                           f"not installed; add them with: {install_command('serve')}")
