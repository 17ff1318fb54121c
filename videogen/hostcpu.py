"""What this host's CPU can execute, for the code whose output bits depend on it.

Two kinds of code here pick their machine code from the CPU at run time:

* x264 (the MP4 encoder) chooses SIMD functions per instruction set, and a few of them
  (MB-tree's floating-point propagation) round differently with and without FMA: the same
  frames gave different MP4 bytes with x264's SSE2 and AVX2 functions on one machine. The
  encoder pins one set (:func:`x264_asm`) so that every x86-64-v3 CPU, Intel or AMD, runs the
  same functions.
* torch's CPU kernels (ATen, oneDNN, MKL) choose AVX2, AVX-512 or AMX code and cannot be
  pinned to one result across CPUs. Checkpoints record :func:`instruction_sets` so that a
  resume on a CPU of another kind is refused instead of silently giving another video.

No torch import: the CPU worker and the API use this module too.
"""

from __future__ import annotations

import functools
import platform

# x86-64-v3: what x264's "AVX2" level assumes besides AVX2 itself (FMA3, BMI1/2, LZCNT,
# which Linux lists as "abm").
_X86_64_V3 = frozenset({"avx", "avx2", "fma", "bmi1", "bmi2", "abm"})
# The flags that change which torch kernels run: the vector widths and the matrix units.
_KERNEL_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "asimd",
    "sve",
    "sve2",
)


@functools.cache
def _cpuinfo() -> tuple[str, str, frozenset[str]]:
    """(vendor, model name, flags) from /proc/cpuinfo; empty where there is none (not Linux)."""
    vendor = model = ""
    flags: frozenset[str] = frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return vendor, model, flags
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("vendor_id", "CPU implementer") and not vendor:
            vendor = value
        elif key == "model name" and not model:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
        elif not line.strip() and vendor and flags:
            break  # the first processor's block is enough: all cores are of one kind here
    return vendor, model, flags


def model_name() -> str:
    """The CPU's marketing name, e.g. 'AMD EPYC' ('' if unknown)."""
    return _cpuinfo()[1] or platform.processor()


def instruction_sets() -> dict[str, object]:
    """What decides which CPU kernels run: architecture, vendor, and the relevant flags.

    MKL takes other code paths on Intel than on AMD with the same flags, so the vendor counts.
    """
    vendor, _, flags = _cpuinfo()
    return {
        "arch": platform.machine(),
        "vendor": vendor,
        "flags": sorted(f for f in _KERNEL_FLAGS if f in flags),
    }


def x264_asm() -> str | None:
    """The x264 ``asm`` setting that gives this CPU the same encoder functions as its peers.

    "AVX2" on every x86-64-v3 CPU, so AVX-512 machines encode like AVX2 ones (x264's AVX-512
    functions are the only ones those would add); "SSE2" on older x86-64 CPUs (their bytes may
    differ from the AVX2 ones); None (x264's own choice) on other architectures.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    return "AVX2" if _cpuinfo()[2] >= _X86_64_V3 else "SSE2"
