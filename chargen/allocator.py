"""Keep freed memory for the next step: a program's choice, which the command and the server make.

glibc's malloc maps each block over its threshold (128 KB, rising to the largest block freed)
afresh from the OS, and hands the top of its heap back once more than twice that lies free there.
The sampler's step allocates and frees the batch's arrays, megabytes of them, at every character:
so each step faulted those pages in again, zeroed. Drawing 4,000 names in one process took
12,000 minor page faults, 50 with the memory kept, and `chargen sample -n 20000` ran 11% faster
(docs/benchmarks.md, "Freed memory kept"). Since the engine steps only prefixes it has not
stepped before (chargen.sampling.prefixes), its steps are smaller: the same draw now takes
2,400-3,000 faults with the defaults and 500-700 with the memory kept. The setting is
process-wide, so the library leaves it to the program: the `sample`, `score`, `eval` and `serve`
commands make it (`cli.KEEP_FREED_MEMORY`; their worker processes inherit it); a Python program
may call `keep_freed_memory` too. Elsewhere (macOS, musl) it does nothing.
"""

from __future__ import annotations

import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)
HEAP_BLOCKS = 32 << 20  # blocks up to this size come from the heap (glibc's largest mmap threshold)
KEEP_FREE = 256 << 20  # free memory at the heap's top up to this is kept, not handed back


def keep_freed_memory() -> bool:
    """Serve blocks up to HEAP_BLOCKS from the heap and keep up to KEEP_FREE of freed memory for
    reuse; True where glibc's malloc took both settings. The price: a process keeps up to
    KEEP_FREE bytes it no longer uses (a sampler's peak is tens of MB)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # numpy imports it already

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own malloc
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Setting either one ends glibc's own moving threshold, so both are set.
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREE))
