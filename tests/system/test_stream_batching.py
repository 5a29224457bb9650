"""Stream batching on real engines (README "Serve's high-throughput mode and stream_batch_ms").

The config the cluster runs says whether the inference app batches (`args.stream_batch_ms`) and the
tight app (none set) does not. One long stream from each, read off the socket as it arrives:

* every event is still one whole chunk object, and greedy decoding streams exactly the text of the
  same request answered without streaming (nothing lost, doubled or reordered by the batching);
* with batching, after the first two events (sent at once) the events arrive in at most one
  network read per window: reads <= 2 + duration / window (+ slack). That holds at any machine
  speed; a fast machine packs many events into each read, a slow one few (the time from the role
  chunk to the first token is printed; that the first token is not held back is
  tests/unit/test_stream_batching.py's, timing-free);
* without it (the tight app) in more than a quarter as many reads as events, which shows the
  first assertion measures the batching and not the network (a slower machine spaces events
  further apart, so this only gets easier).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from integration.support import BASE_URL, D4_GENERATOR, auth_headers

from .cluster import APP, app_config, long_stream, skip_or_fail, wait_ready

pytestmark = [pytest.mark.slow]

TOKENS = 400
TIGHT_APP, TIGHT_MODEL = "tight", "llama-3.2-3b"


def _greedy(model: str, stream: bool) -> dict[str, Any]:
    body = {**long_stream(model, TOKENS), "temperature": 0, "stream": stream}
    if not stream:
        del body["stream_options"]
    return body


async def _read_stream(
    client: httpx.AsyncClient, path: str, model: str
) -> tuple[list[dict], int, float, float]:
    """(chunk objects, network reads that carried events, seconds from the role chunk to the first
    token, seconds from the first token to the last event)."""
    events: list[dict] = []
    reads, buffer = 0, ""
    arrival: list[float] = []
    async with client.stream("POST", path, json=_greedy(model, stream=True)) as response:
        assert response.status_code == 200, (await response.aread())[:300]
        async for text in response.aiter_text():
            buffer += text
            *complete, buffer = buffer.split("\n\n")
            fresh = [e for e in complete if e.startswith("data: ") and e != "data: [DONE]"]
            if fresh:
                reads += 1
            for event in fresh:
                events.append(json.loads(event[len("data: ") :]))
                arrival.append(time.monotonic())
    first_token = next(i for i, e in enumerate(events) if _text(e))
    return events, reads, arrival[first_token] - arrival[0], arrival[-1] - arrival[first_token]


def _text(event: dict) -> str | None:
    return event["choices"][0]["delta"].get("content") if event["choices"] else None


async def test_batched_stream_keeps_every_event_in_fewer_reads(
    http: httpx.AsyncClient, serve_config: dict[str, Any]
) -> None:
    window_ms = float(app_config(serve_config, APP)["args"].get("stream_batch_ms", 0))
    if window_ms <= 0:
        skip_or_fail(f"the {APP} app of the config does not batch streams (args.stream_batch_ms)")
    await wait_ready(http, [D4_GENERATOR])
    events, reads, first_gap, duration = await _read_stream(http, "/v1/chat/completions", D4_GENERATOR)
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == TOKENS
    assert all(e["object"] == "chat.completion.chunk" and len(e["choices"]) <= 1 for e in events)
    whole = await http.post("/v1/chat/completions", json=_greedy(D4_GENERATOR, stream=False))
    assert whole.status_code == 200, whole.text[:300]
    streamed = "".join(_text(e) or "" for e in events)
    assert streamed == whole.json()["choices"][0]["message"]["content"], "batching changed the text"
    windows = duration / (window_ms / 1000)
    print(
        f"\n{len(events)} events in {reads} reads over {duration:.2f}s ({windows:.0f} windows of "
        f"{window_ms} ms); role chunk -> first token {first_gap * 1000:.1f} ms"
    )
    # A timer flush may land just before a window's end: allow a fifth more, and a few reads that
    # TCP split.
    bound = 2 + windows * 1.2 + 4
    assert reads <= bound, f"{len(events)} events in {reads} reads, over {bound:.0f}: not batched"


async def test_unbatched_app_sends_events_one_by_one(serve_config: dict[str, Any]) -> None:
    tight = app_config(serve_config, TIGHT_APP)
    if float(tight["args"].get("stream_batch_ms", 0)) > 0:
        pytest.skip("the tight app batches too; nothing to compare with")
    base = BASE_URL.rstrip("/") + tight["route_prefix"]
    async with httpx.AsyncClient(base_url=base, headers=auth_headers(), timeout=120) as client:
        await wait_ready(client, [TIGHT_MODEL])
        events, reads, _, _ = await _read_stream(client, "/v1/chat/completions", TIGHT_MODEL)
    print(f"\nunbatched: {len(events)} events in {reads} reads")
    assert reads > len(events) / 4, f"{len(events)} events in only {reads} reads without batching"
