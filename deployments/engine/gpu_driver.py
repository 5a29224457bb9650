"""Refuse to start a GPU engine on an NVIDIA driver too old for the CUDA build vLLM brings.

vllm 0.32's wheels are built against CUDA 13, which needs driver R580 or newer. On an older driver
torch fails deep inside CUDA initialisation ("CUDA driver version is insufficient", or no device at
all); this check names the driver, the minimum and the fix instead. The driver version is read through
NVML (pynvml, a vLLM dependency) or, failing that, `nvidia-smi`; the reader is injectable so the check
is unit-tested without a GPU.

    python -m deployments.engine.gpu_driver     # exit 0 and print the version, or exit 1 with the reason
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable

# CUDA 13.0 needs an R580 driver (NVIDIA's CUDA toolkit release notes, "minimum required driver").
MIN_DRIVER_MAJOR = 580
CUDA_BUILD = "CUDA 13"

DriverReader = Callable[[], str | None]


class GpuDriverError(RuntimeError):
    """No NVIDIA driver, or one older than the CUDA build of the installed vLLM needs."""


def read_driver_nvml() -> str | None:
    try:
        import pynvml  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded: no usable driver
        return None
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        pynvml.nvmlShutdown()


def read_driver_nvidia_smi() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    result = subprocess.run(
        [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return lines[0] if result.returncode == 0 and lines else None


def read_driver_version() -> str | None:
    return read_driver_nvml() or read_driver_nvidia_smi()


def driver_major(version: str) -> int:
    try:
        return int(version.strip().split(".")[0])
    except ValueError:
        raise GpuDriverError(f"unreadable NVIDIA driver version {version!r}") from None


def check_gpu_driver(reader: DriverReader = read_driver_version) -> str:
    """The driver version, or GpuDriverError saying what is wrong and how to fix it."""
    version = reader()
    if version is None:
        raise GpuDriverError(
            "no NVIDIA driver found (neither NVML nor nvidia-smi answers): the gpu profile needs an "
            f"NVIDIA GPU with driver R{MIN_DRIVER_MAJOR}+; on EKS use the pinned accelerated AL2023 AMI "
            "(docs/deploy-eks.md), elsewhere install the driver, or run the cpu profile"
        )
    if driver_major(version) < MIN_DRIVER_MAJOR:
        raise GpuDriverError(
            f"NVIDIA driver {version} is too old: vLLM's {CUDA_BUILD} build needs R{MIN_DRIVER_MAJOR} or "
            f"newer. Upgrade the driver (on EKS: the pinned accelerated AL2023 AMI in "
            "k8s/cluster/karpenter-gpu-nodepool.yaml and eksctl-cluster.yaml carries it)"
        )
    return version


def main() -> int:
    try:
        version = check_gpu_driver()
    except GpuDriverError as error:
        print(f"driver check failed: {error}", file=sys.stderr)
        return 1
    print(f"NVIDIA driver {version} (>= R{MIN_DRIVER_MAJOR} for {CUDA_BUILD}): ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
