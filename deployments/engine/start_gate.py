"""One vLLM engine start at a time per GPU: the gate every engine start passes, GPU or CPU.

vLLM sizes its KV cache from whole-device free-memory deltas measured while it loads and profiles.
Two engines starting together on one GPU (D4 puts two 0.5-GPU replicas on one L40S) see each other's
allocations as their own or as memory that vanished, and fail: "No available memory for the cache
blocks" (vllm-project/vllm#55827) or an assertion in the memory profiler (#56830). The gate makes that
impossible: an engine start holds an exclusive `flock` on a lock file per device, on the node's local
disk, from before vLLM loads the weights until its KV cache is allocated and its CUDA graphs are
captured. Replicas on one node share the file; the kernel releases the lock when its holder exits, so
a replica that dies mid-start never wedges the others.

The device is what Ray gave the replica (`CUDA_VISIBLE_DEVICES`): replicas on different GPUs start in
parallel, replicas sharing one wait for each other. The CPU profile has no GPU and takes the lock
named "cpu", so its engines go through the same gate, one at a time per node.

Before a GPU engine starts, the gate also checks the NVIDIA driver (deployments/engine/gpu_driver.py), so
an old driver fails with a message naming it instead of a CUDA stack trace.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from deployments.engine.gpu_driver import DriverReader, check_gpu_driver, read_driver_version

logger = logging.getLogger("ray.serve")

LOCK_DIR_ENV = "INFERENCE_ENGINE_LOCK_DIR"
DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / "inference-engine-start"
POLL_INTERVAL_S = 0.5
LOG_EVERY_S = 30.0


def device_keys(env: Mapping[str, str] | None = None, *, gpu: bool = True) -> list[str]:
    """Lock names for the devices this process will use: one per visible GPU, or ["cpu"]."""
    env = os.environ if env is None else env
    if not gpu:
        return ["cpu"]
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    devices = sorted({d.strip() for d in visible.split(",") if d.strip()})
    # No CUDA_VISIBLE_DEVICES (a GPU run outside Ray): every GPU of the node is visible.
    return [f"gpu-{d}" for d in devices] or ["gpu-all"]


class DeviceLock:
    """An exclusive, process-lifetime `flock` on `<lock_dir>/<key>.lock`, taken without blocking."""

    def __init__(self, lock_dir: Path, key: str):
        lock_dir.mkdir(parents=True, exist_ok=True)
        self.path = lock_dir / f"{key}.lock"
        self._fd: int | None = None

    def try_acquire(self, holder: str) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return False
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{holder} pid {os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@asynccontextmanager
async def engine_start_slot(
    model_id: str,
    *,
    gpu: bool,
    env: Mapping[str, str] | None = None,
    lock_dir: Path | None = None,
    driver_reader: DriverReader = read_driver_version,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[None]:
    """Hold every device lock of this replica while the body (the engine start) runs.

    Waits, polling, while another engine on the same device starts; cancellation (the replica's
    start timeout) stops the wait. On a GPU the driver is checked first.
    """
    if gpu:
        version = check_gpu_driver(driver_reader)
        logger.info("%s: NVIDIA driver %s", model_id, version)
    env = os.environ if env is None else env
    directory = lock_dir or Path(env.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)
    locks = [DeviceLock(directory, key) for key in device_keys(env, gpu=gpu)]
    held: list[DeviceLock] = []
    try:
        for lock in locks:  # sorted keys: two multi-GPU replicas never hold one lock each
            logged_at: float | None = None
            while not lock.try_acquire(model_id):
                now = clock()
                if logged_at is None or now - logged_at >= LOG_EVERY_S:
                    logger.info("%s: waiting for %s (engine start of %s)", model_id, lock.path, lock.holder())
                    logged_at = now
                await asyncio.sleep(POLL_INTERVAL_S)
            held.append(lock)
        yield
    finally:
        for lock in reversed(held):
            lock.release()
