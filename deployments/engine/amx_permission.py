"""Grant AMX tile permission inside every vLLM worker process, before its first forward pass.

Why: on Intel CPUs with AMX, vLLM's CPU attention picks its AMX kernel for bf16 from the CPUID flag
alone, but Linux only lets a process execute AMX tile instructions after it asks for them
(arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA). oneDNN and torch's brgemm ask lazily, and only for
GEMMs of more than 4 rows; a tiny model's linears never reach them. So a first batch of <= 4 tokens
ran AMX attention without permission and the worker died with SIGILL. vLLM imports
`worker_extension_cls` in each worker before loading the model; importing this module asks.
It is a no-op (returns False) on CPUs without AMX, on other architectures, and on GPUs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

logger = logging.getLogger(__name__)

SYS_ARCH_PRCTL = 158  # x86_64 syscall number
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any("amx_tile" in line for line in cpuinfo if line.startswith("flags"))
    except OSError:
        return False


def request_amx_permission() -> bool:
    """Ask the kernel for AMX tile data in this process; True when AMX is usable afterwards."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64") or not _cpu_has_amx():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        granted = ctypes.c_ulong(0)
        if libc.syscall(SYS_ARCH_PRCTL, ARCH_GET_XCOMP_PERM, ctypes.byref(granted)) == 0 and (
            granted.value & (1 << XFEATURE_XTILEDATA)
        ):
            return True
        return libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    except OSError:
        logger.warning("could not request AMX permission; bf16 CPU attention may fault", exc_info=True)
        return False


AMX_GRANTED = request_amx_permission()


class AmxPermissionExtension:
    """vLLM `worker_extension_cls`: importing it in the worker is what matters; this method lets
    the replica confirm it with `collective_rpc("amx_permission_status")`."""

    def amx_permission_status(self) -> tuple[int, bool]:
        return os.getpid(), request_amx_permission()
