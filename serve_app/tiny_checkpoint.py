"""Build a small random-weight Llama checkpoint, with a chat template, entirely offline.

The CPU profile serves every catalog model id from this one checkpoint so that presets and the
integration suite run unchanged on machines with no GPU and no model hub. The weights are random:
the output is not prose, but token counts, streaming, sampling and error paths are all real vLLM.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Llama-3-style chat markup. `<think>`/`</think>` are real vocabulary entries so that vLLM's
# deepseek_r1 reasoning parser (which looks the markers up by token id) works on this checkpoint.
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|pad|>",
    "<unk>",
]
REASONING_TOKENS = ["<think>", "</think>"]
# Markers vLLM's tool parsers look up in the vocabulary: hermes (qwen2.5-7b) wraps a call in
# <tool_call>...</tool_call>, llama3_json (llama-3.2-3b) starts one with <|python_tag|>, and
# granite (granite-8b-code-128k) with <|tool_call|>. Every catalog id is served from this one
# checkpoint, so it carries all of them.
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<|python_tag|>", "<|tool_call|>"]

# Tools-aware: the tool list goes into a system turn, an assistant's earlier calls are rendered
# as <tool_call> JSON, and tool results come back in turns of role "tool" with their call id.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|start_header_id|>system<|end_header_id|>\n\n"
    "You may call these functions. To call one, answer with "
    '<tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call>\n'
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}<|eot_id|>{% endif %}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['role'] == 'tool' %}[{{ message['tool_call_id'] }}] {% endif %}"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% for call in message.get('tool_calls') or [] %}"
    "<tool_call>{\"name\": {{ call['function']['name'] | tojson }}, "
    "\"arguments\": {{ call['function']['arguments'] }}}</tool_call>"
    "{% endfor %}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# Varied text so the byte-level BPE learns real merges; the content is irrelevant.
_CORPUS_SEED = (
    "Hello, respond briefly. The quick brown fox jumps over the lazy dog. "
    "def add(a, b):\n    return a + b\n"
    "A generator drafts an answer, a critic reviews it, and the generator revises. "
    "Write a Python function that reverses a string. What is 2 + 2? "
    "Ray Serve scales deployments; vLLM runs the engine; tokens stream over SSE. "
    "APPROVED. The draft is correct. NEEDS REVISION: handle the empty list. "
)


def build_tokenizer(vocab_size: int):  # returns transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS_SEED * 4] * 64, trainer=trainer)
    tokenizer.add_tokens(REASONING_TOKENS + TOOL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|pad|>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_checkpoint(out_dir: Path, *, seed: int = 0, vocab_size: int = 2048) -> Path:
    """Write tokenizer, config and bf16 safetensors weights to `out_dir`; return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: the CPU attention kernel refuses 16
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(dtype=torch.bfloat16)  # type: ignore[call-arg,arg-type]
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id})
    )
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("models/tiny-llama"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.out / "config.json").exists():
        vocab = json.loads((args.out / "tokenizer.json").read_text())["added_tokens"]
        missing = set(REASONING_TOKENS + TOOL_TOKENS) - {t["content"] for t in vocab}
        if not missing:
            print(f"checkpoint already at {args.out}")
            return
        print(f"checkpoint at {args.out} predates tokens {sorted(missing)}; rebuilding it")
    print(f"built {build_checkpoint(args.out, seed=args.seed)}")


if __name__ == "__main__":
    main()
