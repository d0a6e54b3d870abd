"""The ``forge`` command keeps one malloc arena for all its threads (glibc): every fetch,
download and probe thread would otherwise fragment a heap of its own (issue 18, peak memory)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# threads that each allocate (blocks past pymalloc's 512 bytes go to malloc), then glibc's own
# account of its heaps: one <heap nr=...> per arena in use
HEAPS = """
import ctypes, os, sys, threading
from forge_core.cli import tune_allocator
if sys.argv[1] == "tuned":
    tune_allocator()
held = []
def work():
    held.append([bytes(4096 + i) for i in range(200)])
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
path = sys.argv[2]
f = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(f))
libc.fclose(ctypes.c_void_p(f))
print(open(path).read().count("<heap nr="))
"""


def heaps(tmp_path, mode: str, **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", HEAPS, mode, str(tmp_path / f"{mode}.xml")], env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_the_forge_process_keeps_one_malloc_arena_for_its_threads(tmp_path):
    assert heaps(tmp_path, "plain") > 1  # what the threads get without it
    assert heaps(tmp_path, "tuned") == 1
    # a setting the user gave wins
    assert heaps(tmp_path, "tuned", MALLOC_ARENA_MAX="8") > 1
