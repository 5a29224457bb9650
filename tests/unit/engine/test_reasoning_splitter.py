"""deployments/engine/vllm_engine.py's VllmReasoningSplitter over vLLM's real `deepseek_r1` parser
and the tiny checkpoint's tokenizer (built by scripts/setup.sh), alone and under ChatServing:
reasoning goes to `reasoning_content`, the answer to `content`, and an answer cut before
`</think>` has `content` null (README: deepseek-r1's reasoning)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deployments.engine.vllm_engine import VllmReasoningSplitter
from deployments.model.serving.chat import ChatServing
from serve_app.config import RequestLimits
from serve_app.protocol import ChatCompletionRequest

from ..fakes import FakeEngine

CHECKPOINT = Path(__file__).resolve().parents[3] / "models" / "tiny-llama"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    if not (CHECKPOINT / "tokenizer.json").is_file():
        pytest.fail(f"no tiny checkpoint at {CHECKPOINT}: run scripts/setup.sh", pytrace=False)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(CHECKPOINT)


@pytest.fixture(scope="module")
def parser_cls() -> Any:
    from vllm.reasoning import ReasoningParserManager

    return ReasoningParserManager.get_reasoning_parser("deepseek_r1")


def _streamed(splitter: VllmReasoningSplitter, tokenizer: Any, text: str) -> tuple[str, str | None]:
    """Feed `text` token by token as vLLM's detokenizer would; the reasoning and content joined."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    previous_text, previous_ids = "", list[int]()
    reasoning, content = "", None
    for token_id in ids:
        current_ids = [*previous_ids, token_id]
        current_text = tokenizer.decode(current_ids)
        delta_text = current_text[len(previous_text) :]
        r, c = splitter.split_delta(
            previous_text, current_text, delta_text, previous_ids, current_ids, [token_id]
        )
        reasoning += r or ""
        if c:
            content = (content or "") + c
        previous_text, previous_ids = current_text, current_ids
    return reasoning, content


def test_whole_text_splits_at_think(tokenizer: Any, parser_cls: Any) -> None:
    splitter = VllmReasoningSplitter(parser_cls(tokenizer))
    assert splitter.split("<think>check twice</think>The answer is 4") == ("check twice", "The answer is 4")
    assert splitter.split("<think>still thinking") == ("still thinking", None)


def test_streamed_tokens_split_the_same_way(tokenizer: Any, parser_cls: Any) -> None:
    reasoning, content = _streamed(
        VllmReasoningSplitter(parser_cls(tokenizer)), tokenizer, "<think>check twice</think>The answer is 4"
    )
    assert reasoning.strip() == "check twice"
    assert content is not None and content.strip() == "The answer is 4"
    reasoning, content = _streamed(VllmReasoningSplitter(parser_cls(tokenizer)), tokenizer, "<think>no end")
    assert reasoning.strip() == "no end" and content is None


@dataclass
class FakeEngineWithVllmParser(FakeEngine):
    """The fake engine's scripted text, split by vLLM's real deepseek_r1 parser."""

    parser: Any = None
    tokenizer: Any = None

    def reasoning_splitter(self) -> VllmReasoningSplitter | None:  # type: ignore[override]
        return VllmReasoningSplitter(self.parser)

    def token_id(self, piece: str) -> int:  # type: ignore[override]
        # The real id of each piece's first token: the streaming parser finds <think> by its id.
        return int(self.tokenizer.encode(piece, add_special_tokens=False)[0])


async def test_chat_answer_cut_before_think_ends_has_null_content(tokenizer: Any, parser_cls: Any) -> None:
    engine = FakeEngineWithVllmParser(
        outputs=[("<think>", "weigh", " it", " up")],
        finish_reasons=["length"],
        parser=parser_cls(tokenizer),
        tokenizer=tokenizer,
    )
    serving = ChatServing(engine, "deepseek-r1-7b", RequestLimits(), vocab_size=1000)
    request = ChatCompletionRequest.model_validate(
        {"model": "deepseek-r1-7b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    )
    response = await serving.create(request, "req-1")
    message = response.choices[0].message
    assert message.content is None
    assert message.reasoning_content == "weigh it up"
    assert response.choices[0].finish_reason == "length"
    streamed = [chunk async for chunk in await serving.stream(request, "req-2")]
    deltas = [c.choices[0].delta for c in streamed if c.choices]
    assert "".join(d.reasoning_content or "" for d in deltas) == "weigh it up"
    assert not any(d.content for d in deltas[1:]), "no content after the role chunk"
