"""Process lookup and py-spy profiling of the cluster's Python processes during a level.

`Profiler` records the ingress replica, the model replica and Ray's HTTP proxy with
`py-spy record --nonblocking --format raw` (collapsed stacks, active threads only) while a load
runs; `summarize` attributes the samples to our code, Ray, vLLM and the rest.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

OURS = ("serve_app/", "deployments/", "bench/")
BUCKETS = (("ours", OURS), ("ray", ("ray/",)), ("vllm", ("vllm/",)), ("pydantic", ("pydantic",)),
           ("starlette/fastapi/uvicorn", ("starlette/", "fastapi/", "uvicorn/")),
           ("asyncio", ("asyncio/",)), ("grpc", ("grpc",)))  # fmt: skip


def find_processes(markers: dict[str, str]) -> dict[str, int]:
    """{label: pid} of processes whose command line contains each marker (first match)."""
    found: dict[str, int] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        for label, marker in markers.items():
            if label not in found and marker in cmdline:
                found[label] = proc.info["pid"]
    return found


def cluster_markers(app: str, model_id: str) -> dict[str, str]:
    return {
        "ingress": f"ServeReplica:{app}:ingress",
        "model": f"ServeReplica:{app}:{model_id}",
        "proxy": "ray::ProxyActor",
    }


def engine_workers(root_pid: int) -> list[dict[str, Any]]:
    """The vLLM workers under a process: their CPU affinity and OMP_NUM_THREADS (how the engine
    is pinned matters more than anything else on a 2-core machine)."""
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []
    workers = []
    for child in children:
        try:
            if "VLLM::Worker" not in " ".join(child.cmdline()) and child.name() != "VLLM::Worker":
                continue
            environ = child.environ()
            workers.append(
                {
                    "pid": child.pid,
                    "cpu_affinity": child.cpu_affinity(),
                    "omp_num_threads": environ.get("OMP_NUM_THREADS"),
                }
            )
        except psutil.Error:
            continue
    return workers


class Profiler:
    """py-spy on several processes at once; use as a context manager around a level."""

    def __init__(self, pids: dict[str, int], out_dir: Path, tag: str, rate: int = 200):
        self.pids, self.out_dir, self.tag, self.rate = pids, out_dir, tag, rate
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.outputs: dict[str, Path] = {}

    def __enter__(self) -> Profiler:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for label, pid in self.pids.items():
            out = self.out_dir / f"{self.tag}-{label}.txt"
            self.outputs[label] = out
            self.procs[label] = subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--rate", str(self.rate), "--nonblocking",
                 "--format", "raw", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def bucket_of(frame: str) -> str:
    for name, needles in BUCKETS:
        if any(needle in frame for needle in needles):
            return name
    return "other"


def summarize(path: Path, top: int = 12) -> dict[str, Any]:
    """Samples by bucket of the leaf frame, and our functions by inclusive samples."""
    leaf: Counter[str] = Counter()
    ours_inclusive: Counter[str] = Counter()
    leaf_frames: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if "(" in f and ":" in f]
        if not frames:
            continue
        total += count
        leaf[bucket_of(frames[-1])] += count
        leaf_frames[frames[-1]] += count
        for frame in {f for f in frames if any(o in f for o in OURS)}:
            ours_inclusive[frame] += count
    return {
        "samples": total,
        "self_by_bucket": dict(leaf.most_common()),
        "top_self_frames": leaf_frames.most_common(top),
        "ours_inclusive": ours_inclusive.most_common(top),
    }


def format_summary(label: str, summary: dict[str, Any], rate: int) -> str:
    total = summary["samples"] or 1
    lines = [f"{label}: {summary['samples']} active samples ({summary['samples'] / rate:.2f} s CPU at {rate} Hz)"]
    lines.append("  self time by package: " + ", ".join(
        f"{name} {100 * n / total:.0f}%" for name, n in summary["self_by_bucket"].items()))  # fmt: skip
    lines += [f"  self {100 * n / total:5.1f}%  {frame}" for frame, n in summary["top_self_frames"][:8]]
    lines += [f"  ours {100 * n / total:5.1f}%  {frame}" for frame, n in summary["ours_inclusive"][:8]]
    return "\n".join(lines)
