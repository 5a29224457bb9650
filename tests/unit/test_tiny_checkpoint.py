"""scripts/tiny_checkpoint.py: the offline tokenizer of the CPU profile's tiny checkpoint."""

from __future__ import annotations

import pytest

from scripts.tiny_checkpoint import REASONING_TOKENS, SPECIAL_TOKENS, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(512)


def test_chat_template_renders_llama3_style_markup(tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert without.endswith("Hello<|eot_id|>")


def test_think_markers_are_single_tokens(tokenizer) -> None:
    for marker in REASONING_TOKENS:
        ids = tokenizer.encode(marker, add_special_tokens=False)
        assert len(ids) == 1, (marker, ids)
        assert tokenizer.decode(ids) == marker
    ids = tokenizer.encode("<think>hm</think>ok", add_special_tokens=False)
    start, end = (tokenizer.convert_tokens_to_ids(t) for t in REASONING_TOKENS)
    assert ids[0] == start and end in ids
    assert tokenizer.decode(ids) == "<think>hm</think>ok"


def test_special_tokens_are_wired(tokenizer) -> None:
    assert tokenizer.bos_token == "<|begin_of_text|>" and tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer.pad_token == "<|pad|>"
    for token in SPECIAL_TOKENS:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1


def test_text_round_trips(tokenizer) -> None:
    text = "def add(a, b):\n    return a + b  # ünïcode"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_tokenizer_is_deterministic() -> None:
    assert build_tokenizer(512).get_vocab() == build_tokenizer(512).get_vocab()
