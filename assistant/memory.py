"""Giving the memory that loading freed back to the system.

Loading the models frees hundreds of megabytes that the C library's allocator keeps in its
heap instead of returning: parsing Gemma 3's 33 MB ``tokenizer.json`` alone leaves about
200 MB, and packing the weights leaves more. A process that stays up (``assistant serve``,
the chat) would hold it for as long as it runs. Measured on this project's default models:
the generator loaded, 2.25 GB resident, 1.82 GB after :func:`release_free_memory`; the
answer server when ready, 2.71 GB before, 2.08 GB after (BENCHMARKS.md, "Generation speed",
round 11).
"""

from __future__ import annotations

import ctypes
import gc


def release_free_memory(*, collect: bool = True) -> bool:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim(0)``: 0.3–30 ms),
    after collecting Python's garbage cycles when ``collect`` (about 0.2 s with transformers
    loaded: once after loading, not after every answer). False where the C library has no
    ``malloc_trim`` (macOS, musl): nothing is released there."""
    if collect:
        gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def resident_bytes() -> int | None:
    """This process's resident memory in bytes (``VmRSS`` in ``/proc/self/status``); None
    where there is no such file (not Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None
