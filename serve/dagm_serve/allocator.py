"""Keep freed memory in the model workers, which run the model on the CPU.

A forward pass at 512x512 allocates activations of tens of megabytes. glibc's malloc
serves each block over its mmap threshold (at most 32 MB) with a fresh mapping and
unmaps it when freed, so every batch faults in and zeroes its activations anew: 8,000-
20,000 page faults per 16-image batch, a sixth of the CPU time spent in the kernel.
With mappings off and trimming out of reach, freed blocks stay in the heap for the next
batch: 160 -> 183 images/s for 16-image batches on 2 cores (bench/serving.py measures it
side by side), for about 150 MB more resident memory per worker, which then stays flat
across batches of every size.

DAGM_KEEP_FREED_MEMORY=false gives that memory back, for a host whose models' workers
would not fit with it (many models on a multi-model endpoint).

Training gains too little from it to pay its memory: 1.04x images/s in the epoch loop,
no change in a whole job's wall time, 200 MB more at its peak (one epoch on the
genuine images, three alternated runs). So only the worker's load call sets it, never
an import: any other process, a test runner too, keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt's parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_NEVER = 2**31 - 1  # an int's largest value: no heap top that large is ever freed


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks for reuse; False where the C library is
    not glibc (musl, macOS), which is left as it is."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER))
