"""Returning freed heap memory to the system (glibc's malloc_trim), measured in the process's
own resident memory."""

import ctypes
import sys

import pytest

from assistant.memory import release_free_memory


def resident_anon_kb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_memory_goes_back_to_the_system():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 KB chunks stay in the heap (below glibc's mmap threshold), as a tokenizer's parse does
    # every other chunk kept: the freed ones are holes the heap's top cannot give back
    chunks, kept = [], []
    for _ in range(1600):
        chunks.append(libc.malloc(64 * 1024))
        kept.append(libc.malloc(64 * 1024))
    for chunk in chunks:
        ctypes.memset(chunk, 1, 64 * 1024)  # resident
    for chunk in chunks:
        libc.free(chunk)
    held = resident_anon_kb()
    assert release_free_memory(collect=False)
    assert held - resident_anon_kb() > 50_000  # of the 100 MB freed, most went back
    for block in kept:
        libc.free(block)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status")
def test_resident_bytes_grow_with_memory_touched():
    from assistant.memory import resident_bytes

    before = resident_bytes()
    block = bytearray(64 * 1024 * 1024)  # zero-filled: every page touched
    assert resident_bytes() - before > 50 * 1024 * 1024
    del block
