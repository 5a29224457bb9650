"""SSE framing (serve_app/sse.py) and the integration suite's spec-following SSE parser."""

from __future__ import annotations

import json

import pytest
from integration.support import UndecodableEvent, _sse_events, sse_event_data

from serve_app.protocol import ChatChunkChoice, ChatCompletionChunk, DeltaMessage
from serve_app.sse import DONE, encode_event

AWKWARD = "a\u2028b\u2029c\x85d\ve\x1cf\u00e9"  # characters str.splitlines() splits at


def _chunk(content: str) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id="c", created=0, model="m", choices=[ChatChunkChoice(index=0, delta=DeltaMessage(content=content))]
    )


def test_an_event_is_one_line_and_decodes_to_the_same_text() -> None:
    event = encode_event(_chunk(AWKWARD))
    body = event[: -len("\n\n")]
    assert "\n" not in body and "\r" not in body
    assert body.splitlines() == [body], "escaped so that even str.splitlines() keeps it whole"
    assert json.loads(body.removeprefix("data: "))["choices"][0]["delta"]["content"] == AWKWARD


def test_parser_follows_the_spec_on_raw_separators() -> None:
    # An event as another server may send it: the separators raw inside a JSON string.
    raw_json = json.dumps({"content": AWKWARD}, ensure_ascii=False)
    raw = f"data: {raw_json}\n\n: comment\r\ndata:[DONE]\r\n\r\n"
    assert _sse_events(raw) == [{"content": AWKWARD}, "[DONE]"]


def test_parser_joins_data_lines_and_drops_an_unterminated_event() -> None:
    assert sse_event_data("data: a\ndata:  b\r\rdata: c") == ["a\n b"]


def test_undecodable_event_carries_its_data() -> None:
    with pytest.raises(UndecodableEvent) as info:
        _sse_events("data: {broken\n\n")
    assert info.value.data == "{broken"
    assert "{broken" in str(info.value)


def test_done_framing() -> None:
    assert sse_event_data(DONE) == ["[DONE]"]
