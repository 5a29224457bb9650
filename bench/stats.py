"""Pure statistics over per-request measurements: percentiles, inter-token latency, level figures, ratios.

Times are seconds in, milliseconds out (figures whose name ends in `_ms`). Nothing here does I/O.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The figures reported per system and concurrency, in table order.
FIGURES = (
    "ttft_p50_ms",
    "ttft_p95_ms",
    "itl_p50_ms",
    "tpot_p50_ms",
    "e2e_p50_ms",
    "e2e_p95_ms",
    "output_tokens_per_s",
    "requests_per_s",
    "errors",
)


@dataclass
class RequestResult:
    """One streamed request as the client saw it. Times are `time.perf_counter()` seconds."""

    start: float
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk carrying text
    end: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None  # a short kind: "http_503", "stream_error", "timeout", "short_output", ...
    detail: str | None = None  # what the server said about the error, shortened

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.start if self.chunk_times else None

    @property
    def e2e(self) -> float | None:
        return None if self.end is None else self.end - self.start


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between order statistics
    (numpy's default "linear" method). None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must lie in [0, 100], got {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def inter_token_latencies(chunk_times: Sequence[float]) -> list[float]:
    """Gaps between consecutive text-carrying chunks of one stream (vLLM's benchmark definition).

    A chunk that coalesces several tokens counts as one gap, so stream batching shows up as fewer,
    longer gaps; `tokens_per_chunk` tells how much coalescing there was."""
    return [later - earlier for earlier, later in itertools.pairwise(chunk_times)]


def time_per_output_token(ttft: float, e2e: float, completion_tokens: int) -> float | None:
    """Mean decode time per token after the first; None when there is no second token."""
    if completion_tokens < 2:
        return None
    return (e2e - ttft) / (completion_tokens - 1)


# A stream whose text chunks all arrive within this share of its end-to-end time was not streamed
# but delivered in one burst: the server process was starved of CPU (or buffered), so its TTFT
# says nothing about time to first token.
BURST_SPAN_SHARE = 0.1
BURST_MIN_CHUNKS = 8


def is_burst(result: RequestResult) -> bool:
    if len(result.chunk_times) < BURST_MIN_CHUNKS or result.e2e is None or result.e2e <= 0:
        return False
    return (result.chunk_times[-1] - result.chunk_times[0]) < BURST_SPAN_SHARE * result.e2e


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _rate(amount: float, seconds: float) -> float:
    return round(amount / seconds, 3) if seconds > 0 else 0.0


def summarize(results: Sequence[RequestResult], wall_s: float) -> dict[str, Any]:
    """Figures for one system at one concurrency. `wall_s` is the measured phase's duration
    (first request sent to last one finished); throughput counts successful requests only."""
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    e2es = [r.e2e for r in ok if r.e2e is not None]
    itls = [gap for r in ok for gap in inter_token_latencies(r.chunk_times)]
    tpots = [
        t
        for r in ok
        if r.ttft is not None and r.e2e is not None and r.completion_tokens
        for t in [time_per_output_token(r.ttft, r.e2e, r.completion_tokens)]
        if t is not None
    ]
    tokens = sum(r.completion_tokens or 0 for r in ok)
    chunks = sum(len(r.chunk_times) for r in ok)
    error_kinds = Counter(r.error or "incomplete" for r in results if not r.ok)
    examples = {r.error: r.detail for r in results if r.error and r.detail}
    return {
        "requests": len(results),
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "error_kinds": dict(sorted(error_kinds.items())),
        "error_examples": dict(sorted(examples.items())),
        "wall_s": round(wall_s, 3),
        "ttft_p50_ms": _ms(percentile(ttfts, 50)),
        "ttft_p95_ms": _ms(percentile(ttfts, 95)),
        "itl_p50_ms": _ms(percentile(itls, 50)),
        "itl_p95_ms": _ms(percentile(itls, 95)),
        "tpot_p50_ms": _ms(percentile(tpots, 50)),
        "e2e_p50_ms": _ms(percentile(e2es, 50)),
        "e2e_p95_ms": _ms(percentile(e2es, 95)),
        "output_tokens": tokens,
        "output_tokens_per_s": _rate(tokens, wall_s),
        "requests_per_s": _rate(len(ok), wall_s),
        "tokens_per_chunk": round(tokens / chunks, 3) if chunks else None,
        "burst_share": round(sum(map(is_burst, ok)) / len(ok), 3) if ok else None,
        "prompt_tokens": sorted({r.prompt_tokens for r in ok if r.prompt_tokens is not None}),
    }


def ratio(cluster: float | None, bare: float | None) -> float | None:
    """cluster / bare, or None when either is missing or bare is zero (errors usually are)."""
    if cluster is None or bare is None or bare == 0:
        return None
    return round(cluster / bare, 3)


def ratios(cluster: Mapping[str, Any], bare: Mapping[str, Any], names: Iterable[str] = FIGURES) -> dict:
    return {name: ratio(cluster.get(name), bare.get(name)) for name in names}


def overhead_ms(cluster: Mapping[str, Any], bare: Mapping[str, Any], name: str) -> float | None:
    """cluster - bare for a figure in milliseconds, None when either is missing."""
    if cluster.get(name) is None or bare.get(name) is None:
        return None
    return round(cluster[name] - bare[name], 3)


def critique_overhead(e2e_ms: float, step_latencies_ms: Sequence[float], total_latency_ms: float) -> dict:
    """Where a critique request's time goes: its model calls vs everything around them.

    `overhead` is client e2e minus the sum of the steps (all orchestration, HTTP and proxy time);
    `pipeline_glue` is the part inside the pipeline between steps (total_latency_ms - steps) and
    `outside_pipeline` the rest (HTTP, proxy, routing, JSON). The target is met when overhead is
    under 5% of e2e or under 10 ms per step."""
    steps_ms = sum(step_latencies_ms)
    overhead = e2e_ms - steps_ms
    n = len(step_latencies_ms)
    per_step = overhead / n if n else None
    share = overhead / e2e_ms if e2e_ms > 0 else None
    return {
        "e2e_ms": round(e2e_ms, 3),
        "steps": n,
        "steps_sum_ms": round(steps_ms, 3),
        "total_latency_ms": round(total_latency_ms, 3),
        "overhead_ms": round(overhead, 3),
        "overhead_per_step_ms": None if per_step is None else round(per_step, 3),
        "overhead_share": None if share is None else round(share, 4),
        "pipeline_glue_ms": round(total_latency_ms - steps_ms, 3),
        "outside_pipeline_ms": round(e2e_ms - total_latency_ms, 3),
        "target_met": (share is not None and share < 0.05) or (per_step is not None and per_step < 10),
    }


def cost_split(
    short: Mapping[str, float], long: Mapping[str, float], short_tokens: int, long_tokens: int
) -> dict[str, dict[str, float]]:
    """Per-process CPU ms per request and per streamed token, from the CPU ms per request of two
    otherwise identical loads that differ only in output length (a line through two points)."""
    if long_tokens <= short_tokens:
        raise ValueError("long_tokens must exceed short_tokens")
    split = {}
    for process in short.keys() & long.keys():
        per_token = (long[process] - short[process]) / (long_tokens - short_tokens)
        split[process] = {
            "per_request_ms": round(short[process] - per_token * short_tokens, 3),
            "per_token_ms": round(per_token, 4),
        }
    return dict(sorted(split.items()))
