"""The benchmark's statistics (bench/stats.py) and report tables: pure functions, no servers."""

from __future__ import annotations

import pytest

from bench import report
from bench.stats import (
    RequestResult,
    cost_split,
    critique_overhead,
    inter_token_latencies,
    is_burst,
    overhead_ms,
    percentile,
    ratio,
    ratios,
    summarize,
    time_per_output_token,
)


def test_percentile_interpolates_linearly_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 95) == pytest.approx(3.85)  # numpy.percentile([1,2,3,4], 95)
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None


def test_percentile_rejects_out_of_range_q() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_inter_token_latencies_are_gaps_between_chunks() -> None:
    assert inter_token_latencies([1.0, 1.25, 1.5, 2.0]) == pytest.approx([0.25, 0.25, 0.5])
    assert inter_token_latencies([1.0]) == []
    assert inter_token_latencies([]) == []


def test_time_per_output_token_excludes_the_first_token() -> None:
    assert time_per_output_token(ttft=0.1, e2e=1.1, completion_tokens=11) == pytest.approx(0.1)
    assert time_per_output_token(ttft=0.1, e2e=0.1, completion_tokens=1) is None


def _request(start: float, chunks: list[float], tokens: int, error: str | None = None) -> RequestResult:
    return RequestResult(
        start=start,
        chunk_times=chunks,
        end=chunks[-1] + 0.001 if chunks else start + 0.01,
        prompt_tokens=32,
        completion_tokens=tokens,
        error=error,
    )


def test_summarize_figures_in_milliseconds_and_rates_over_wall_time() -> None:
    results = [
        _request(0.0, [0.010, 0.020, 0.030, 0.040], 4),
        _request(0.0, [0.030, 0.040, 0.050, 0.060], 4),
        _request(0.1, [], 0, error="http_503"),
    ]
    row = summarize(results, wall_s=0.5)
    assert (row["requests"], row["ok"], row["errors"]) == (3, 2, 1)
    assert row["error_kinds"] == {"http_503": 1}
    assert row["ttft_p50_ms"] == pytest.approx(20.0)  # ttfts 10 and 30 ms
    assert row["ttft_p95_ms"] == pytest.approx(29.0)
    assert row["itl_p50_ms"] == pytest.approx(10.0)
    assert row["e2e_p50_ms"] == pytest.approx(51.0)  # e2e 41 and 61 ms
    assert row["output_tokens"] == 8
    assert row["output_tokens_per_s"] == pytest.approx(16.0)
    assert row["requests_per_s"] == pytest.approx(4.0)  # failed requests do not count
    assert row["tokens_per_chunk"] == pytest.approx(1.0)
    assert row["prompt_tokens"] == [32]


def test_summarize_counts_coalesced_chunks() -> None:
    row = summarize([_request(0.0, [0.01, 0.02], 4)], wall_s=1.0)
    assert row["tokens_per_chunk"] == pytest.approx(2.0)


def test_summarize_with_only_failures_has_no_latencies() -> None:
    row = summarize([_request(0.0, [], 0, error="timeout")], wall_s=1.0)
    assert row["ttft_p50_ms"] is None and row["itl_p50_ms"] is None
    assert row["output_tokens_per_s"] == 0 and row["errors"] == 1


def test_unfinished_request_is_an_error() -> None:
    result = RequestResult(start=0.0, chunk_times=[0.1])
    assert not result.ok
    assert summarize([result], wall_s=1.0)["error_kinds"] == {"incomplete": 1}


def test_ratio_and_overhead() -> None:
    assert ratio(90.0, 100.0) == pytest.approx(0.9)
    assert ratio(1.0, 0) is None and ratio(None, 1.0) is None and ratio(1.0, None) is None
    cluster = {"ttft_p50_ms": 15.0, "output_tokens_per_s": 450.0, "errors": 0}
    bare = {"ttft_p50_ms": 12.0, "output_tokens_per_s": 500.0, "errors": 0}
    both = ratios(cluster, bare, ["ttft_p50_ms", "output_tokens_per_s", "errors"])
    assert both == {"ttft_p50_ms": 1.25, "output_tokens_per_s": 0.9, "errors": None}
    assert overhead_ms(cluster, bare, "ttft_p50_ms") == pytest.approx(3.0)
    assert overhead_ms(cluster, {"ttft_p50_ms": None}, "ttft_p50_ms") is None


def test_critique_overhead_splits_time_around_the_steps() -> None:
    row = critique_overhead(e2e_ms=1000.0, step_latencies_ms=[300.0, 300.0, 340.0], total_latency_ms=970.0)
    assert row["steps_sum_ms"] == pytest.approx(940.0)
    assert row["overhead_ms"] == pytest.approx(60.0)
    assert row["overhead_per_step_ms"] == pytest.approx(20.0)
    assert row["overhead_share"] == pytest.approx(0.06)
    assert row["pipeline_glue_ms"] == pytest.approx(30.0)
    assert row["outside_pipeline_ms"] == pytest.approx(30.0)
    assert row["target_met"] is False  # 6% and 20 ms per step
    assert critique_overhead(1000.0, [990.0], 995.0)["target_met"] is True  # 1%
    assert critique_overhead(100.0, [30.0, 30.0, 30.0], 95.0)["target_met"] is True  # 10% but 3.3 ms/step


def test_targets_at_concurrency_1_and_32() -> None:
    systems = {
        "bare": {"1": {"ttft_p50_ms": 12.0}, "32": {"ttft_p50_ms": 40.0}},
        "cluster": {"1": {"ttft_p50_ms": 18.5}, "32": {"ttft_p50_ms": 45.0}},
    }
    result = report.targets(systems, {"32": {"output_tokens_per_s": 0.93}})
    assert result["ttft_p50_overhead_ms"]["value"] == pytest.approx(6.5)
    assert result["ttft_p50_overhead_ms"]["met"] is False
    assert result["throughput_ratio"] == {"concurrency": 32, "value": 0.93, "min": 0.9, "met": True}
    assert result["ttft_p50_overhead_ms"]["basis"] == "streams at concurrency 1"


def test_ttft_target_falls_back_to_one_token_requests_when_streams_burst() -> None:
    systems = {
        "bare": {"1": {"ttft_p50_ms": 70.0, "burst_share": 0.8}},
        "cluster": {"1": {"ttft_p50_ms": 12.0, "burst_share": 0.0}},
    }
    first_token = {"bare": {"ttft_p50_ms": 8.0}, "cluster": {"ttft_p50_ms": 11.0}}
    bursty = report.targets(systems, {}, first_token)["ttft_p50_overhead_ms"]
    assert bursty["value"] == pytest.approx(3.0) and bursty["met"] is True
    assert bursty["basis"] == "1-token requests at concurrency 1"
    assert "from 1-token requests" in report.console(
        {"systems": systems, "targets": {"ttft_p50_overhead_ms": bursty}}
    )

    systems["bare"]["1"]["burst_share"] = 0.1  # valid streams: their TTFT counts
    streamed = report.targets(systems, {}, first_token)["ttft_p50_overhead_ms"]
    assert streamed["value"] == pytest.approx(-58.0) and streamed["basis"] == "streams at concurrency 1"


def test_markdown_block_replaces_only_the_generated_part(tmp_path) -> None:
    path = tmp_path / "benchmarks.md"
    report.write_markdown(path, "first\n")
    text = path.read_text().replace(report.END, report.END + "\n\n## Analysis (hand-written)\n")
    path.write_text(text)
    report.write_markdown(path, "second\n")
    text = path.read_text()
    assert "second" in text and "first" not in text and "## Analysis (hand-written)" in text


def test_cost_split_separates_per_request_from_per_token_cost() -> None:
    short = {"ingress": 10.5, "model": 5.2}  # CPU ms per request with 1 output token
    long = {"ingress": 73.5, "model": 68.2, "proxy": 1.0}  # and with 64; proxy missing from short
    split = cost_split(short, long, short_tokens=1, long_tokens=64)
    assert set(split) == {"ingress", "model"}
    assert split["ingress"]["per_token_ms"] == pytest.approx(1.0)
    assert split["ingress"]["per_request_ms"] == pytest.approx(9.5)
    assert split["model"]["per_request_ms"] == pytest.approx(4.2)
    with pytest.raises(ValueError):
        cost_split(short, long, short_tokens=8, long_tokens=8)


def test_a_stream_delivered_in_one_burst_is_flagged() -> None:
    streamed = _request(0.0, [0.01 * (i + 1) for i in range(10)], 10)
    burst = _request(0.0, [0.1 + 0.0001 * i for i in range(10)], 10)
    short = _request(0.0, [0.1, 0.1001], 2)  # too few chunks to judge
    assert not is_burst(streamed) and is_burst(burst) and not is_burst(short)
    row = summarize([streamed, burst], wall_s=1.0)
    assert row["burst_share"] == pytest.approx(0.5)
    assert report.warnings({"systems": {"bare": {"1": row}}})


def test_tenancy_figures_read_the_engine_step_from_time_per_output_token() -> None:
    from bench.tenancy import _ttft

    # First text at +0.1 s, 11 tokens ending at +1.1 s: ten steps of 100 ms after the first token.
    done = RequestResult(start=0.0, chunk_times=[0.1, 0.6, 1.1], end=1.1, completion_tokens=11)
    failed = RequestResult(start=0.0, error="http_429")
    figures = _ttft([done, failed])
    assert figures["ok"] == 1 and figures["requests"] == 2
    assert figures["ttft_p50_ms"] == 100.0
    assert figures["tpot_p50_ms"] == 100.0
    assert figures["errors"] == {"http_429": 1}
