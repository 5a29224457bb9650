"""The Python half of scripts/gpu_smoke.sh: plan which presets fit this node, watch models load, probe.

    python -m bench.gpu_smoke plan --out-dir .run/gpu-smoke [--assume-gpus "NVIDIA L40S:4:48"]
                                   [--assume-driver 580.95.05]
    python -m bench.gpu_smoke watch --base-url URL --out load.json [--timeout 2400]
    python -m bench.gpu_smoke probe --base-url URL --load load.json

`plan` checks the NVIDIA driver (deployments/engine/gpu_driver.py), reads the node's GPUs (nvidia-smi),
re-runs every preset's fit check (serve_app/config/fit.py) against them, and writes one Serve config
per preset that fits (serve_config.yaml with `args.preset` set), validated like a deploy would be.
With the --assume-* flags it needs no GPU: that is the dry run CI runs.
`watch` records, from its start, when each model first reports `ready` (its load time). `probe`
sends each model one streamed request and prints load time, time to first token and tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from deployments.engine.gpu_driver import GpuDriverError, check_gpu_driver, read_driver_version
from serve_app.config import AppArgs, ConfigError, check_preset_fits, list_presets, load_catalog, load_preset
from serve_app.config.schema import GpuTarget

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = PROJECT_ROOT / "serve_config.yaml"
PROBE_PROMPT = "Explain in one paragraph what a GPU's memory bandwidth means for LLM inference."
PROBE_MAX_TOKENS = 128


@dataclass(frozen=True)
class PlanEntry:
    preset: str
    runs: bool
    reason: str


def parse_gpus(spec: str) -> GpuTarget:
    """`NAME:COUNT:MEMORY_GB`, e.g. `NVIDIA L40S:4:48`."""
    name, count, memory = spec.rsplit(":", 2)
    return GpuTarget(name=name.strip(), count=int(count), memory_gb=float(memory))


def node_gpus() -> GpuTarget:
    """The node's GPUs as nvidia-smi reports them (all must be of one kind)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise SystemExit("nvidia-smi not found: this is not a GPU node (use --dry-run)")
    out = subprocess.run(
        [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    rows = [tuple(part.strip() for part in line.split(",")) for line in out.splitlines() if line.strip()]
    names = {row[0] for row in rows}
    if len(names) != 1:
        raise SystemExit(f"expected one GPU model on the node, found {sorted(names)}")
    memory_gb = min(float(row[1]) for row in rows) * 1024**2 / 1e9  # MiB -> GB
    return GpuTarget(name=rows[0][0], count=len(rows), memory_gb=round(memory_gb, 1))


def plan(gpus: GpuTarget, args: AppArgs) -> list[PlanEntry]:
    """Every preset, and whether it runs on `gpus` (its fit re-checked against the node's GPUs)."""
    catalog = load_catalog(args.resolve(args.catalog_path))
    presets_dir = args.resolve(args.presets_dir)
    entries = []
    for name in list_presets(presets_dir):
        preset = load_preset(presets_dir, name, catalog)
        if preset.gpu.count > gpus.count:
            entries.append(PlanEntry(name, False, f"needs {preset.gpu.count} GPUs, node has {gpus.count}"))
            continue
        on_node = preset.model_copy(update={"gpu": gpus.model_copy(update={"count": preset.gpu.count})})
        try:
            fits = check_preset_fits(on_node, catalog)
        except ConfigError as error:
            entries.append(PlanEntry(name, False, str(error)))
            continue
        kv = ", ".join(f"{f.model_id} {f.kv_capacity_tokens} KV tokens" for f in fits)
        entries.append(PlanEntry(name, True, f"fits {preset.gpu.count} x {gpus.name}: {kv}"))
    return entries


def serve_config_for(preset: str, base: dict[str, Any]) -> dict[str, Any]:
    """serve_config.yaml (the gpu profile) with args.preset set, validated as `serve deploy` would."""
    from ray.serve.schema import ServeDeploySchema  # pydantic only: no Ray runtime is started

    config = copy.deepcopy(base)
    app = config["applications"][0]
    app["args"] = {**(app.get("args") or {}), "preset": preset}
    if AppArgs.model_validate(app["args"]).profile != "gpu":
        raise SystemExit(f"{SERVE_CONFIG.name} must run the gpu profile")
    ServeDeploySchema.model_validate(config)
    return config


def cmd_plan(options: argparse.Namespace) -> int:
    reader = (lambda: options.assume_driver) if options.assume_driver else read_driver_version
    try:
        driver = check_gpu_driver(reader)
    except GpuDriverError as error:
        print(f"driver check failed: {error}", file=sys.stderr)
        return 2
    gpus = parse_gpus(options.assume_gpus) if options.assume_gpus else node_gpus()
    print(f"node: {gpus.count} x {gpus.name} {gpus.memory_gb:g} GB, NVIDIA driver {driver}")
    base = yaml.safe_load(SERVE_CONFIG.read_text())
    args = AppArgs.model_validate(base["applications"][0].get("args") or {})
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = plan(gpus, args)
    selected = [e for e in entries if e.runs and (not options.presets or e.preset in options.presets)]
    for entry in entries:
        mark = "run " if entry in selected else "skip"
        print(f"  {mark} {entry.preset}: {entry.reason}")
    for entry in selected:
        path = out_dir / f"{entry.preset}.serve.yaml"
        path.write_text(yaml.safe_dump(serve_config_for(entry.preset, base), sort_keys=False))
    (out_dir / "plan.txt").write_text("".join(f"{e.preset}\n" for e in selected))
    if not selected:
        print("no preset fits this node", file=sys.stderr)
        return 1
    return 0


def _headers() -> dict[str, str]:
    key = os.environ.get("INFERENCE_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def cmd_watch(options: argparse.Namespace) -> int:
    started = time.monotonic()
    ready_at: dict[str, float] = {}
    models: list[str] = []
    while time.monotonic() - started < options.timeout:
        try:
            body = httpx.get(f"{options.base_url}/v1/models", headers=_headers(), timeout=10).json()
            models = [card["id"] for card in body["data"]]
            for card in body["data"]:
                if card["status"] == "ready" and card["id"] not in ready_at:
                    ready_at[card["id"]] = time.monotonic() - started
                    print(f"  {card['id']} ready after {ready_at[card['id']]:.0f} s", flush=True)
        except (httpx.HTTPError, KeyError, ValueError):
            pass  # the ingress is not up yet
        if models and set(models) <= set(ready_at):
            Path(options.out).write_text(json.dumps(ready_at))
            return 0
        time.sleep(2)
    Path(options.out).write_text(json.dumps(ready_at))
    print(f"timed out after {options.timeout} s; ready: {sorted(ready_at)} of {models}", file=sys.stderr)
    return 1


async def _probe_one(client: httpx.AsyncClient, model: str) -> tuple[float, float, int]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROBE_PROMPT}],
        "max_tokens": PROBE_MAX_TOKENS,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.monotonic()
    first: float | None = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            delta = (event.get("choices") or [{}])[0].get("delta") or {}
            if first is None and (delta.get("content") or delta.get("reasoning_content")):
                first = time.monotonic()
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    done = time.monotonic()
    ttft = (first or done) - sent
    rate = tokens / (done - first) if first is not None and done > first else 0.0
    return ttft, rate, tokens


async def _probe(options: argparse.Namespace) -> int:
    load = json.loads(Path(options.load).read_text()) if options.load else {}
    async with httpx.AsyncClient(base_url=options.base_url, headers=_headers(), timeout=600) as client:
        models = [card["id"] for card in (await client.get("/v1/models")).json()["data"]]
        rows = [("model", "load s", "TTFT s", "tokens/s", "tokens")]
        for model in models:
            ttft, rate, tokens = await _probe_one(client, model)
            loaded = load.get(model)
            rows.append(
                (model, f"{loaded:.0f}" if loaded else "?", f"{ttft:.2f}", f"{rate:.1f}", str(tokens))
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_smoke", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="check the driver, pick the presets that fit, write their configs")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--assume-gpus", help="NAME:COUNT:MEMORY_GB instead of asking nvidia-smi (dry run)")
    p.add_argument("--assume-driver", help="driver version instead of asking NVML/nvidia-smi (dry run)")
    p.add_argument("--presets", nargs="*", help="only these presets (default: every one that fits)")
    w = sub.add_parser("watch", help="wait until every model is ready, recording each one's load time")
    w.add_argument("--base-url", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--timeout", type=float, default=2400)
    r = sub.add_parser("probe", help="one streamed request per model: TTFT and tokens/s")
    r.add_argument("--base-url", required=True)
    r.add_argument("--load", help="the watch output, for the load-time column")
    options = parser.parse_args(argv)
    if options.command == "plan":
        return cmd_plan(options)
    if options.command == "watch":
        return cmd_watch(options)
    return asyncio.run(_probe(options))


if __name__ == "__main__":
    sys.exit(main())
