"""The load generator: closed-loop streaming chat completions on httpx, the same for every system.

Each level runs `warmup` requests first (discarded), then `requests` measured ones with
`concurrency` workers. Prompts have a fixed token count (calibrated with the checkpoint's own
tokenizer and chat template) and are unique per request, so prefix caching cannot shortcut them;
outputs have a fixed length (`max_tokens` = `min_tokens`, `ignore_eos`).
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.stats import RequestResult

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Workload:
    model: str
    prompt_tokens: int
    output_tokens: int
    requests: int
    concurrency: int
    warmup: int
    timeout_s: float = 300.0
    # vLLM's min_tokens + ignore_eos pin the output length; off for servers that reject them (the
    # output is then checked to have max_tokens tokens anyway).
    extensions: bool = True


class PromptFactory:
    """Chat messages whose templated prompt has exactly `prompt_tokens` tokens, unique per index.

    The content is space-separated single letters that the tokenizer encodes as one token each, so
    the count is exact and a different random sequence per request defeats prefix caching."""

    def __init__(self, prompt_tokens: int, tokenizer_path: Path | None):
        self.prompt_tokens = prompt_tokens
        self.letters = list(string.ascii_lowercase)
        self.words = prompt_tokens
        self.calibrated = False
        if tokenizer_path is not None:
            try:
                self._calibrate(tokenizer_path)
            except Exception as exc:  # the run goes on; servers' usage reports the real count
                print(f"(prompt length not calibrated: {type(exc).__name__}: {exc})")

    def _calibrate(self, path: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))

        def count(text: str) -> int:
            return len(tokenizer.encode(text, add_special_tokens=False))

        self.letters = [c for c in string.ascii_lowercase if count(" " + c) == 1 and count(c) == 1]

        def templated(words: int) -> int:
            rendered = tokenizer.apply_chat_template(
                self.messages(0, words), add_generation_prompt=True, tokenize=False
            )
            return count(str(rendered))

        overhead = templated(1) - 1
        for words in range(max(1, self.prompt_tokens - overhead - 3), self.prompt_tokens - overhead + 4):
            if templated(words) == self.prompt_tokens:
                self.words, self.calibrated = words, True
                return
        self.words = max(1, self.prompt_tokens - overhead)

    def messages(self, index: int, words: int | None = None) -> list[dict[str, str]]:
        rng = random.Random(index)
        content = " ".join(rng.choice(self.letters) for _ in range(words or self.words))
        return [{"role": "user", "content": content}]


def chat_body(workload: Workload, messages: list[dict[str, str]]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": workload.model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": workload.output_tokens,
        "temperature": 0.0,
    }
    if workload.extensions:
        body.update(min_tokens=workload.output_tokens, ignore_eos=True)
    return body


def _has_text(event: dict[str, Any]) -> bool:
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        # vLLM names reasoning text `reasoning` (newer) or `reasoning_content` (older, and ours).
        if (
            delta.get("content")
            or delta.get("reasoning")
            or delta.get("reasoning_content")
            or choice.get("text")
        ):
            return True
    return False


async def stream_one(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], expected_tokens: int
) -> RequestResult:
    """One streamed request; never raises for request failures, it records them as `error`."""
    result = RequestResult(start=time.perf_counter())
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                result.error = f"http_{response.status_code}"
                result.detail = (await response.aread())[:300].decode(errors="replace")
                return result
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                now = time.perf_counter()
                event = json.loads(data)
                if "error" in event or event.get("object") == "error":
                    result.error, result.detail = "stream_error", data[:300]
                    continue
                if _has_text(event):
                    result.chunk_times.append(now)
                usage = event.get("usage")
                if usage:
                    result.prompt_tokens = usage.get("prompt_tokens")
                    result.completion_tokens = usage.get("completion_tokens")
            result.end = time.perf_counter()
            if result.error is None and not done:
                result.error = "no_done"
            elif result.error is None and result.completion_tokens != expected_tokens:
                result.error = "wrong_output_length"
            elif result.error is None and not result.chunk_times and expected_tokens > 1:
                # A single token may decode to no text (a partial UTF-8 byte of the random model):
                # a correct answer without a first-text time. Many tokens and no text is not.
                result.error = "no_text"
    except httpx.TimeoutException:
        result.error = "timeout"
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"transport_{type(exc).__name__}"
    return result


def make_client(base_url: str, api_key: str | None, concurrency: int, timeout_s: float) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    slots = concurrency + 4
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers=headers,
        timeout=httpx.Timeout(timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots),
    )


async def _closed_loop(
    client: httpx.AsyncClient,
    workload: Workload,
    prompts: PromptFactory,
    count: int,
    first_index: int,
) -> list[RequestResult]:
    results: list[RequestResult] = []
    next_index = first_index

    async def worker() -> None:
        nonlocal next_index
        while next_index < first_index + count:
            index = next_index
            next_index += 1
            body = chat_body(workload, prompts.messages(index))
            results.append(await stream_one(client, CHAT_PATH, body, workload.output_tokens))

    await asyncio.gather(*(worker() for _ in range(min(workload.concurrency, count))))
    return results


async def run_level(
    base_url: str, api_key: str | None, workload: Workload, prompts: PromptFactory, seed: int = 0
) -> tuple[list[RequestResult], float, list[RequestResult]]:
    """Warm up, then measure. Returns (measured results, wall seconds, warm-up results)."""
    async with make_client(base_url, api_key, workload.concurrency, workload.timeout_s) as client:
        warm = await _closed_loop(client, workload, prompts, workload.warmup, seed * 1_000_000)
        results = await _closed_loop(client, workload, prompts, workload.requests, seed * 1_000_000 + 10_000)
    if not results:
        return results, 0.0, warm
    ends = [r.end or r.start for r in results]
    return results, max(ends) - min(r.start for r in results), warm


async def get_json(base_url: str, path: str, api_key: str | None, timeout_s: float = 10.0) -> Any:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=timeout_s, headers=headers) as client:
        response = await client.get(base_url.rstrip("/") + path)
        response.raise_for_status()
        return response.json()
