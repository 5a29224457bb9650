"""Benchmark the cluster against bare vLLM on this machine: `python -m bench.run [--tiny]`.

By default it starts bare vLLM (same checkpoint, model id and engine settings as the cluster's
engines), measures it, stops it; then starts the cluster with scripts/cluster.sh (preset
single-qwen2.5-7b: one engine, like bare), measures it and its critique mode, stops it; then prints
the figures and writes docs/benchmarks.{md,json,png}. Exit status 1 when any request failed or a
system could not be measured; missed targets are reported, not failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import meta, profiling, report
from bench.critique import run_critique
from bench.loadgen import PromptFactory, Workload, get_json, run_level
from bench.servers import DEFAULT_CONFIG, PROJECT_ROOT, RAY_WORKER_NICENESS, BareVllm, Cluster, app_args
from bench.stats import cost_split, overhead_ms, ratios, summarize

DOCS = PROJECT_ROOT / "docs"
COST_SPLIT_REQUESTS = 16  # requests per output length in the CPU split
IDLE_BASELINE_S = 5.0  # how long each system's idle CPU use is measured before its first level
OVERHEAD_FIGURES = ("ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "e2e_p50_ms")
FIRST_TOKEN_FIGURES = ("ttft_p50_ms", "ttft_p95_ms", "e2e_p50_ms")  # of the 1-token requests (CPU split)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--concurrency", default="1,8,32", help="comma-separated levels (default 1,8,32)")
    add("--requests-per-level", type=int, default=128, help="measured requests per level")
    add("--warmup", type=int, help="warm-up requests per level (default: max(2, concurrency))")
    add("--prompt-tokens", type=int, default=128)
    add("--output-tokens", type=int, default=64)
    add("--tiny", action="store_true", help="2 requests per level at concurrency 1 and 2; no docs")
    add("--skip-bare", action="store_true")
    add("--skip-cluster", action="store_true")
    add("--cluster-url", help="measure this running cluster; it is then neither started nor stopped")
    add("--api-key", default=os.environ.get("INFERENCE_API_KEY"), help="default: $INFERENCE_API_KEY")
    add("--model", default="qwen2.5-7b", help="model id both systems serve")
    add("--cluster-preset", default="single-qwen2.5-7b", help="preset when the run starts the cluster")
    add("--config", type=Path, default=DEFAULT_CONFIG, help="serve config the engine settings come from")
    add("--bare-port", type=int, default=8300)
    add("--bare-nice", type=int, default=RAY_WORKER_NICENESS, help="bare vLLM's niceness (Ray workers': 15)")
    add("--client-nice", type=int, help="the load generator's niceness (default: --bare-nice)")
    add("--critique-requests", type=int, help="critique requests (default 8, tiny 2; 0 = none)")
    add("--critique-rounds", type=int, help="critique rounds (default 2, tiny 1)")
    add("--write-docs", action=argparse.BooleanOptionalAction, help="docs/benchmarks.* (default: not tiny)")
    add("--json", type=Path, help="also write the figures to this JSON file")
    add("--profile-dir", type=Path, help="py-spy the servers' Python processes at the first level")
    add("--no-vllm-extensions", dest="extensions", action="store_false", help="omit min_tokens/ignore_eos")
    add("--cost-split", action=argparse.BooleanOptionalAction, help="CPU per request/token (not tiny)")
    add("--timeout", type=float, default=300.0, help="per-request timeout, seconds")
    add("--render", type=Path, metavar="JSON", help="only re-render docs/benchmarks.* from a saved run")
    add("--tenancy", action="store_true", help="only the priority-tier overload scenario (bench/tenancy.py)")
    add("--high-key", default="sk-bench-high-000001", help="--tenancy: a high-tier key of the keys file")
    add("--low-key", default="sk-bench-low-0000001", help="--tenancy: a low-tier key of the keys file")
    add("--overload-s", type=float, default=60.0, help="--tenancy: seconds of 2x overload")
    args = p.parse_args(argv)
    if args.tiny:
        args.concurrency, args.requests_per_level = "1,2", 2
        args.warmup = 1 if args.warmup is None else args.warmup
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.critique_requests is None:
        args.critique_requests = 2 if args.tiny else 8
    if args.critique_rounds is None:
        args.critique_rounds = 1 if args.tiny else 2
    if args.write_docs is None:
        args.write_docs = not args.tiny
    if args.client_nice is None:
        args.client_nice = args.bare_nice
    if args.cost_split is None:
        args.cost_split = not args.tiny
    return args


class Runner:
    def __init__(self, args: argparse.Namespace, log_dir: Path):
        self.args, self.log_dir = args, log_dir
        self.systems: dict[str, dict[str, dict]] = {}
        self.failures: list[str] = []
        self.meta: dict[str, Any] = {"engine_workers": {}, "startup_s": {}}
        self.profile: dict[str, Any] = {}
        self.critique: dict[str, Any] | None = None
        self.cost_split: dict[str, Any] = {}
        self.split_errors = 0
        self.first_token: dict[str, dict[str, Any]] = {}
        checkpoint = app_args(args.config).cpu.checkpoint_path()
        self.prompts = PromptFactory(args.prompt_tokens, checkpoint if checkpoint.is_dir() else None)

    def workload(self, concurrency: int) -> Workload:
        a = self.args
        return Workload(
            model=a.model,
            prompt_tokens=a.prompt_tokens,
            output_tokens=a.output_tokens,
            requests=a.requests_per_level,
            concurrency=concurrency,
            warmup=a.warmup if a.warmup is not None else max(2, concurrency),
            timeout_s=a.timeout,
            extensions=a.extensions,
        )

    def measure(self, name: str, url: str, pids: dict[str, int]) -> None:
        """Every level against one system; `pids` are its processes to read CPU time from (and
        to profile at the first level with --profile-dir)."""
        # Ray runs Serve replicas and their engines at nice 15. The load generator (and bare vLLM)
        # run at the same niceness by default, so that none of them preempts the others; servers
        # are started and stopped at the original niceness.
        with profiling.niceness(self.args.client_nice):
            self._measure(name, url, pids)

    def _measure(self, name: str, url: str, pids: dict[str, int]) -> None:
        runs = self.systems.setdefault(name, {})
        idle = profiling.idle_cpu_rate(pids, IDLE_BASELINE_S)
        self.meta.setdefault("idle_cpu_rate", {})[name] = idle
        for index, level in enumerate(self.args.levels):
            workload = self.workload(level)
            level_run = run_level(url, self.args.api_key, workload, self.prompts, seed=index)
            cpu_before, started = profiling.cpu_seconds(pids), time.monotonic()
            if index == 0 and self.args.profile_dir and pids:
                with profiling.Profiler(pids, self.args.profile_dir, f"{name}-c{level}") as prof:
                    results, wall, warm = asyncio.run(level_run)
                self._profiled(name, prof, len(results) + len(warm))
            else:
                results, wall, warm = asyncio.run(level_run)
            row = runs[str(level)] = summarize(results, wall)
            row["warmup_errors"] = sum(1 for r in warm if not r.ok)
            # CPU time of each server process over the level (warm-up included, idle use subtracted).
            cpu_after, elapsed = profiling.cpu_seconds(pids), time.monotonic() - started
            row["cpu_ms_per_request"] = profiling.cpu_ms_per_request(
                cpu_before, cpu_after, len(results) + len(warm), elapsed, idle
            )
            print(
                f"  {name} c={level}: ttft p50 {row['ttft_p50_ms']} ms, itl p50 {row['itl_p50_ms']} ms, "
                f"{row['output_tokens_per_s']} tok/s, errors {row['errors']}, "
                f"CPU ms/request {row['cpu_ms_per_request']}",
                flush=True,
            )
        if self.args.cost_split and pids:
            self.cost_split[name] = self._cost_split(name, url, pids, idle)
            print(f"  {name} CPU split (c=1): {self.cost_split[name]}", flush=True)

    def _cost_split(
        self, name: str, url: str, pids: dict[str, int], idle: dict[str, float]
    ) -> dict[str, Any]:
        """CPU per request and per streamed token of each process: two c=1 loads that differ only
        in output length (1 token, then --output-tokens)."""
        per_request = {}
        lengths = (1, max(2, self.args.output_tokens))
        for tokens in lengths:
            workload = replace(self.workload(1), output_tokens=tokens, requests=COST_SPLIT_REQUESTS, warmup=2)
            cpu_before, started = profiling.cpu_seconds(pids), time.monotonic()
            level_run = run_level(url, self.args.api_key, workload, self.prompts, seed=50)
            results, wall, warm = asyncio.run(level_run)
            if tokens == 1:
                row = summarize(results, wall)
                self.first_token[name] = {k: row.get(k) for k in FIRST_TOKEN_FIGURES}
            failed = [r for r in results + warm if not r.ok]
            self.split_errors += len(failed)
            if failed:
                kinds = Counter(f"{r.error}: {r.detail[:120]}" if r.detail else str(r.error) for r in failed)
                print(f"  !! {len(failed)} failed {tokens}-token request(s) in the CPU split: {dict(kinds)}")
            cpu_after, elapsed = profiling.cpu_seconds(pids), time.monotonic() - started
            count = len(results) + len(warm)
            per_request[tokens] = profiling.cpu_ms_per_request(cpu_before, cpu_after, count, elapsed, idle)
        return cost_split(per_request[lengths[0]], per_request[lengths[1]], *lengths)

    def _profiled(self, name: str, prof: profiling.Profiler, requests: int) -> None:
        for label, path in prof.outputs.items():
            if not path.exists():
                print(f"  (py-spy wrote nothing for {name}/{label})")
                continue
            summary = profiling.summarize(path)
            summary["sampled_cpu_ms_per_request"] = round(summary["samples"] / prof.rate * 1000 / requests, 2)
            self.profile[f"{name}/{label}"] = summary
            print(profiling.format_summary(f"{name}/{label}", summary, prof.rate))

    def run_bare(self) -> None:
        a = self.args
        log = self.log_dir / "bare-vllm.log"
        bare = BareVllm(a.config, a.model, a.bare_port, a.api_key, log, niceness=a.bare_nice)
        self.meta["bare_command"] = meta.shell_command(bare.argv, bare.env, a.bare_nice)
        print(f"==> bare vLLM on :{a.bare_port} (log {log})", flush=True)
        try:
            bare.start()
            assert bare.proc is not None
            self.meta["startup_s"]["bare"] = round(bare.startup_s or 0, 1)
            self.meta["engine_workers"]["bare"] = profiling.engine_workers(bare.proc.pid)
            self.measure(
                "bare", bare.url, {"api_server": bare.proc.pid, **profiling.engine_core(bare.proc.pid)}
            )
        finally:
            bare.stop()

    def run_cluster(self) -> None:
        a = self.args
        cluster = Cluster(a.cluster_url, a.api_key, a.cluster_preset, a.config, self.log_dir / "cluster.log")
        self.meta["cluster_mode"] = (
            f"already running at {cluster.url} (neither started nor stopped by the run)"
            if cluster.external
            else f"`INFERENCE_DEFAULT_PRESET={a.cluster_preset} SERVE_CONFIG={a.config.name} "
            "bash scripts/cluster.sh start` (one engine, like bare vLLM)"
        )
        print(f"==> cluster at {cluster.url}", flush=True)
        try:
            cluster.start()
            if cluster.startup_s is not None:
                self.meta["startup_s"]["cluster"] = round(cluster.startup_s, 1)
            cluster.check(a.model)
            models = asyncio.run(get_json(cluster.url, "/v1/models", a.api_key))
            served = [m["id"] for m in models["data"]]
            self.meta["cluster_preset"] = {"name": models.get("preset"), "models": served}
            pids = profiling.find_processes(profiling.cluster_markers("inference", a.model))
            if "model" in pids:
                self.meta["engine_workers"]["cluster"] = profiling.engine_workers(pids["model"])
                pids.update(profiling.engine_core(pids["model"]))
            pids.update(profiling.haproxy())
            self.meta["serve_settings"] = meta.serve_settings(pids.get("ingress"))
            self.measure("cluster", cluster.url, pids)
            if a.critique_requests > 0:
                print("==> critique mode", flush=True)
                with profiling.niceness(a.client_nice):
                    self.critique = asyncio.run(
                        run_critique(
                            cluster.url, a.api_key, a.model, self.prompts, a.critique_requests,
                            a.critique_rounds, a.output_tokens, extensions=a.extensions,
                        )
                    )  # fmt: skip
        finally:
            cluster.stop()

    def result(self) -> dict[str, Any]:
        a = self.args
        bare, cluster = self.systems.get("bare", {}), self.systems.get("cluster", {})
        common = sorted(set(bare) & set(cluster), key=int)
        settings = {
            "model": a.model,
            "prompt_tokens": a.prompt_tokens,
            "output_tokens": a.output_tokens,
            "requests_per_level": a.requests_per_level,
            "concurrency": a.levels,
            "warmup": a.warmup if a.warmup is not None else "max(2, concurrency)",
            "prompt_calibrated": self.prompts.calibrated,
            "config": a.config.name,
            "bare_niceness": a.bare_nice,
            "client_niceness": a.client_nice,
        }
        result: dict[str, Any] = {
            "meta": {
                **self.meta,
                "finished_at": time.strftime("%Y-%m-%d %H:%M %Z"),
                "machine": meta.machine(),
                "versions": meta.versions(),
                "settings": settings,
                "failures": self.failures,
            },
            "systems": self.systems,
            "ratios": {c: ratios(cluster[c], bare[c]) for c in common},
            "overhead_ms": {
                c: {f: overhead_ms(cluster[c], bare[c], f) for f in OVERHEAD_FIGURES} for c in common
            },
        }
        result["targets"] = report.targets(self.systems, result["ratios"], self.first_token)
        if self.first_token:
            result["first_token"] = self.first_token
        if self.critique:
            result["critique"] = self.critique
        if self.cost_split:
            result["cpu_split"] = self.cost_split
        if self.profile:
            result["profile"] = self.profile
        return result


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` blocks that stop the servers


def run_tenancy_only(args: argparse.Namespace) -> int:
    """The tier scenario against a running cluster (--cluster-url); prints and saves (--json) it."""
    from bench.tenancy import TenancyScenario, run_tenancy

    if not args.cluster_url:
        print("--tenancy measures a running cluster: pass --cluster-url", file=sys.stderr)
        return 2
    runner = Runner(args, Path(tempfile.mkdtemp(prefix="bench-")))
    scenario = TenancyScenario(
        args.cluster_url, args.high_key, args.low_key, runner.workload(1), overload_s=args.overload_s
    )
    with profiling.niceness(args.client_nice):
        figures = asyncio.run(run_tenancy(scenario, runner.prompts))
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["unloaded_high"]["ok"] and figures["overload_high"]["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        report.write_docs(DOCS, json.loads(args.render.read_text()))
        return 0
    if args.tenancy:
        return run_tenancy_only(args)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    runner = Runner(args, log_dir)
    print(f"==> logs in {log_dir}; prompt calibrated: {runner.prompts.calibrated}", flush=True)
    steps = (("bare", args.skip_bare, runner.run_bare), ("cluster", args.skip_cluster, runner.run_cluster))
    for name, skip, step in steps:
        if skip:
            continue
        try:
            step()
        except Exception as exc:  # report it and go on to the other system; the exit status says it
            runner.failures.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"!! {name} could not be measured: {exc}", file=sys.stderr, flush=True)
    result = runner.result()
    print(report.console(result))
    if args.json:
        report.write_json(args.json, result)
    if args.write_docs:
        report.write_docs(DOCS, result)
    errors = sum(row["errors"] for runs in runner.systems.values() for row in runs.values())
    errors += (runner.critique or {}).get("errors", 0) + runner.split_errors
    unmeasured = [name for name, skip, _ in steps if not skip and not runner.systems.get(name)]
    if runner.failures or errors or unmeasured:
        print(f"FAILED: not measured {unmeasured or 'none'}, {errors} request error(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
