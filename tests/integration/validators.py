"""Response validators and an SSE parser for OpenAI-style payloads."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from .support import FINISH_REASONS, STREAM_TIMEOUT, http_timeout


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ResponseValidator:
    @staticmethod
    def validate_usage(usage: Any, max_tokens: int | None = None, n: int = 1) -> dict[str, Any]:
        assert isinstance(usage, dict), f"usage missing or not an object: {usage!r}"
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert _is_int(usage.get(key)) and usage[key] >= 0, f"usage.{key} invalid: {usage!r}"
        assert usage["prompt_tokens"] > 0, usage
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage
        if max_tokens is not None:
            assert usage["completion_tokens"] <= max_tokens * n, f"completion_tokens > {max_tokens}: {usage}"
        return usage

    @classmethod
    def validate_completion(
        cls, data: Any, n: int = 1, max_tokens: int | None = None, obj: str = "chat.completion"
    ) -> dict[str, Any]:
        assert isinstance(data, dict), data
        assert data.get("object") == obj, f"object {data.get('object')!r} != {obj!r}"
        assert isinstance(data.get("id"), str) and data["id"], data
        assert _is_int(data.get("created")) and data["created"] > 0, data
        assert isinstance(data.get("model"), str) and data["model"], data
        choices = data.get("choices")
        assert isinstance(choices, list) and len(choices) == n, f"expected {n} choices: {choices!r}"
        assert sorted(c.get("index") for c in choices) == list(range(n)), choices
        for choice in choices:
            assert choice.get("finish_reason") in FINISH_REASONS, choice
            if obj == "chat.completion":
                message = choice.get("message")
                assert isinstance(message, dict) and message.get("role") == "assistant", choice
                # Always present, as OpenAI sends it: null when the answer is reasoning or tool calls.
                assert "content" in message, message
                assert message["content"] is None or isinstance(message["content"], str), message
                reasoning = message.get("reasoning_content")
                assert reasoning is None or isinstance(reasoning, str), message
            else:
                assert isinstance(choice.get("text"), str), choice
        cls.validate_usage(data.get("usage"), max_tokens=max_tokens, n=n)
        return data

    @classmethod
    def validate_orchestration(
        cls, data: dict[str, Any], mode: str | None = None, expected_models: list[str] | None = None
    ) -> dict[str, Any]:
        """Validate orchestration metadata; pass a whole response to also check the usage sum."""
        orch = data.get("orchestration") if "choices" in data else data
        assert isinstance(orch, dict), f"orchestration metadata missing: {data!r}"[:1000]
        if mode is not None:
            assert orch.get("mode") == mode, orch.get("mode")
        steps = orch.get("steps")
        assert isinstance(steps, list) and steps, orch
        models_used = orch.get("models_used")
        assert isinstance(models_used, list) and all(isinstance(m, str) for m in models_used), orch
        assert models_used == [s.get("model") for s in steps], (models_used, [s.get("model") for s in steps])
        assert _is_int(orch.get("rounds")) and orch["rounds"] >= 0, orch
        assert isinstance(orch.get("total_latency_ms"), int | float) and orch["total_latency_ms"] >= 0, orch
        for step in steps:
            assert isinstance(step.get("role"), str) and isinstance(step.get("model"), str), step
            assert _is_int(step.get("round")), step
            assert isinstance(step.get("content"), str), step
            assert step.get("reasoning_content") is None or isinstance(step["reasoning_content"], str), step
            assert isinstance(step.get("latency_ms"), int | float) and step["latency_ms"] >= 0, step
            cls.validate_usage(step.get("usage"))
        if orch.get("mode") == "critique":
            assert orch.get("stop_reason") in {"approved", "max_rounds", "error"}, orch.get("stop_reason")
            roles = [s["role"] for s in steps]
            assert set(roles) <= {"generator", "critic"}, roles
            assert roles[0] == "generator", roles
            assert all(a != b for a, b in itertools.pairwise(roles)), f"roles must alternate: {roles}"
            if orch["stop_reason"] == "approved":
                assert len(steps) >= 2 and roles[-1] == "critic", roles
            elif orch["stop_reason"] == "max_rounds":
                assert len(steps) >= 3 and roles[-1] == "generator", roles
                assert roles.count("critic") == orch["rounds"], (roles, orch["rounds"])
        elif orch.get("mode") == "ensemble":
            assert orch.get("stop_reason") == "judged", orch.get("stop_reason")
            assert isinstance(orch.get("reason"), str), orch
            roles = [s["role"] for s in steps]
            assert roles[-1] == "judge" and set(roles[:-1]) == {"candidate"}, roles
            assert 2 <= len(roles) - 1 <= 4, roles
        if expected_models is not None:
            missing = set(expected_models) - set(models_used)
            assert not missing, f"models_used {models_used} lacks {missing}"
        if "choices" in data:
            usage = cls.validate_usage(data.get("usage"))
            for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                total = sum(s["usage"][key] for s in steps)
                assert usage[key] == total, f"usage.{key} {usage[key]} != sum of steps {total}"
        return orch

    @staticmethod
    def validate_streaming_chunk(chunk: Any, obj: str = "chat.completion.chunk") -> dict[str, Any]:
        assert isinstance(chunk, dict), chunk
        assert "error" not in chunk, f"error event in stream: {chunk}"
        assert chunk.get("object") == obj, chunk
        assert isinstance(chunk.get("id"), str) and chunk["id"], chunk
        assert _is_int(chunk.get("created")), chunk
        assert isinstance(chunk.get("model"), str), chunk
        assert isinstance(chunk.get("choices"), list), chunk
        for choice in chunk["choices"]:
            assert _is_int(choice.get("index")), choice
            assert choice.get("finish_reason") in FINISH_REASONS | {None}, choice
            if obj == "chat.completion.chunk":
                delta = choice.get("delta")
                assert isinstance(delta, dict), choice
                assert delta.get("content") is None or isinstance(delta["content"], str), delta
            else:
                assert isinstance(choice.get("text"), str), choice
        if chunk.get("orchestration_event") is not None:
            assert isinstance(chunk["orchestration_event"], dict), chunk
        return chunk

    @staticmethod
    def validate_error(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
        """An OpenAI error object: {"error": {"message", "type", "param", "code"}}."""
        if status is not None:
            assert response.status_code == status, (
                f"{response.status_code} != {status}: {response.text[:500]}"
            )
        assert 400 <= response.status_code < 600, response.status_code
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        assert isinstance(error, dict), f"not an OpenAI error object: {body!r}"
        assert isinstance(error.get("message"), str) and error["message"], error
        assert isinstance(error.get("type"), str) and error["type"], error
        assert "param" in error and "code" in error, error
        return error


# ---------------------------------------------------------------- SSE


DONE = "[DONE]"


@dataclass
class StreamResult:
    status: int
    headers: httpx.Headers
    raw: str
    events: list[Any] = field(default_factory=list)  # dicts, plus DONE

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [e for e in self.events if isinstance(e, dict)]

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == DONE

    def json(self) -> Any:
        return json.loads(self.raw)


class SSEParser:
    @staticmethod
    def parse_line(line: str) -> dict[str, Any] | str | None:
        """A `data:` line -> its JSON object, or DONE; other lines (blank, comments) -> None."""
        line = line.rstrip("\r\n")
        if not line.startswith("data:"):
            return None
        payload = line[len("data:") :].strip()
        if payload == DONE:
            return DONE
        value = json.loads(payload)
        assert isinstance(value, dict), f"SSE data is not an object: {payload[:200]}"
        return value

    @classmethod
    def parse_stream(cls, raw: str) -> list[Any]:
        events = [cls.parse_line(line) for line in raw.splitlines()]
        return [e for e in events if e is not None]

    @staticmethod
    def extract_content(chunks: list[Any], index: int = 0, key: str = "content") -> str:
        parts: list[str] = []
        for chunk in chunks:
            if not isinstance(chunk, dict):
                continue
            for choice in chunk.get("choices") or []:
                if choice.get("index", 0) != index:
                    continue
                if "delta" in choice:
                    parts.append((choice["delta"] or {}).get(key) or "")
                else:
                    parts.append(choice.get("text") or "")
        return "".join(parts)

    @classmethod
    async def request(
        cls,
        http: httpx.AsyncClient,
        path: str,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
        timeout: float = STREAM_TIMEOUT,
    ) -> StreamResult:
        """POST a streaming request and read it to the end."""
        async with http.stream(
            "POST", path, json=payload, headers=headers, timeout=http_timeout(timeout)
        ) as r:
            raw = (await r.aread()).decode("utf-8")
        events = cls.parse_stream(raw) if r.status_code == 200 else []
        return StreamResult(r.status_code, r.headers, raw, events)
