"""What tracing costs: `python -m bench.tracing` against the cluster of bench/tracing_ab.yaml.

Three identical one-model apps: `/a` and `/b` untraced, `/traced` exporting every span (ingress and
vLLM) to an OTLP sink this process runs. Each round measures the three in turn (rotating the order)
with the same streamed workload; the figures are the medians over rounds, compared as ratios within
this one run, so the machine's speed (4x between machines) cancels out.

The untraced pair is an A/A test: how far two equal apps differ by chance. Tracing off is the path
both untraced apps run (no middleware, no spans, no extra arguments on Ray calls); it does strictly
less than the traced path, so when traced/untraced sits within the A/A band, tracing off costs
nothing measurable either.

    SERVE_CONFIG=bench/tracing_ab.yaml READY_PATHS="/a/health/ready /b/health/ready /traced/health/ready" \\
      bash scripts/cluster.sh start && python -m bench.tracing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.loadgen import PromptFactory, Workload, run_level
from bench.stats import summarize

APPS = ("a", "b", "traced")
FIGURES = ("ttft_p50_ms", "e2e_p50_ms", "itl_p50_ms", "output_tokens_per_s")
MODEL = "llama-3.2-3b"


class OtlpSink:
    """Accepts OTLP/HTTP trace exports and counts them (the spans are not kept)."""

    def __init__(self, port: int):
        self.exports = 0
        self.bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sink.bytes += len(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                sink.exports += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--base-url", default="http://127.0.0.1:8085")
    add("--api-key", default=os.environ.get("INFERENCE_API_KEY"))
    add("--rounds", type=int, default=5)
    add("--requests", type=int, default=24, help="measured requests per app and round")
    add("--concurrency", type=int, default=4)
    add("--prompt-tokens", type=int, default=128)
    add("--output-tokens", type=int, default=32)
    add("--sink-port", type=int, default=14319, help="where the traced app exports (tracing_ab.yaml)")
    add("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def median_of(rounds: list[dict[str, Any]], figure: str) -> float | None:
    values = [r[figure] for r in rounds if r.get(figure) is not None]
    return statistics.median(values) if values else None


def mean_of(*values: float | None) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known else None


def relative(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else round(value / base, 4)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    workload = Workload(
        model=MODEL,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        requests=args.requests,
        concurrency=args.concurrency,
        warmup=args.concurrency,
    )
    prompts = PromptFactory(args.prompt_tokens, None)
    per_app: dict[str, list[dict[str, Any]]] = {app: [] for app in APPS}
    errors = 0
    for round_ in range(args.rounds):
        order = APPS[round_ % 3 :] + APPS[: round_ % 3]
        for app in order:
            url = f"{args.base_url}/{app}"
            results, wall, _ = await run_level(url, args.api_key, workload, prompts, round_)
            summary = summarize(results, wall)
            errors += summary["errors"]
            per_app[app].append(summary)
            print(
                f"round {round_ + 1} {app:>6}: e2e p50 {summary['e2e_p50_ms']} ms, "
                f"ttft p50 {summary['ttft_p50_ms']} ms, {summary['output_tokens_per_s']} tok/s, "
                f"{summary['errors']} errors",
                flush=True,
            )
    medians = {app: {f: median_of(per_app[app], f) for f in FIGURES} for app in APPS}
    untraced = {f: mean_of(medians["a"][f], medians["b"][f]) for f in FIGURES}
    return {
        "workload": {
            "rounds": args.rounds,
            "requests": args.requests,
            "concurrency": args.concurrency,
            "prompt_tokens": args.prompt_tokens,
            "output_tokens": args.output_tokens,
        },
        "medians": medians,
        "a_a_ratio": {f: relative(medians["b"][f], medians["a"][f]) for f in FIGURES},
        "traced_ratio": {f: relative(medians["traced"][f], untraced[f]) for f in FIGURES},
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sink = OtlpSink(args.sink_port)
    try:
        result = asyncio.run(measure(args))
        # The traced app's last batch leaves its processes within the SDK's 5 s schedule.
        asyncio.run(asyncio.sleep(6))
    finally:
        sink.close()
    result["sink"] = {"exports": sink.exports, "bytes": sink.bytes}
    print("\nmedians over rounds:")
    print(f"{'figure':<22}" + "".join(f"{app:>12}" for app in APPS) + f"{'b/a':>10}{'traced/ab':>12}")
    for f in FIGURES:
        row = "".join(f"{result['medians'][app][f]!s:>12}" for app in APPS)
        print(f"{f:<22}{row}{result['a_a_ratio'][f]!s:>10}{result['traced_ratio'][f]!s:>12}")
    print(f"\nOTLP sink: {sink.exports} exports, {sink.bytes} bytes from the traced app")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if sink.exports == 0:
        print("the traced app exported nothing: tracing was not on", file=sys.stderr)
        return 1
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
