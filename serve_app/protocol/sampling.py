"""Parameters shared by chat and text completions, and their one mapping onto engine sampling."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from serve_app.engine_api import SamplingSpec, StructuredOutput
from serve_app.errors import ContextLengthExceeded, InvalidRequest
from serve_app.protocol.base import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    MAX_STOP_SEQUENCES,
    Request,
    StreamOptions,
    Text,
)


def only_when_true(flag: str, message: str) -> Any:
    """A field validator: the field may be set only when the boolean field `flag`, declared before
    it, is true. A field validator rather than a model one, so that the 400 names the field."""

    def check(cls: type, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get(flag):
            raise ValueError(message)
        return value

    return classmethod(check)


class SamplingFields(Request):
    """Parameters shared by chat and text completions. `to_sampling_spec` is the one place that
    maps them onto the engine's sampling (vLLM's `to_sampling_params` habit); every other request
    field is named in `NOT_SAMPLING` with the place that handles it, and a unit test fails when a
    field is in neither (tests/unit/test_sampling_mapping.py)."""

    # Request fields `to_sampling_spec` reads, besides the output limit (OUTPUT_LIMIT, per route).
    SAMPLING: ClassVar[tuple[str, ...]] = (
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "top_k",
        "min_tokens",
        "ignore_eos",
        "repetition_penalty",
        "priority",
    )
    # Sampling that means the same on every model: token ids (logit_bias) are one vocabulary's.
    PER_MODEL: ClassVar[tuple[str, ...]] = ("logit_bias",)
    # The route's output-limit fields, the one that applies when several are set first.
    OUTPUT_LIMIT: ClassVar[tuple[str, ...]] = ()
    NOT_SAMPLING: ClassVar[dict[str, str]] = {
        "model": "routing (service.py)",
        "stream": "the route's response type",
        "stream_options": "the serving classes' usage chunk",
        "user": "accepted, no effect on generation",
        "metadata": "accepted, no effect on generation",
        "store": "accepted, no effect on generation",
        "service_tier": "accepted, no effect on generation",
    }

    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    # vLLM sampling extensions, accepted as vLLM's own OpenAI server accepts them.
    top_k: int | None = Field(None, ge=-1)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    # vLLM's scheduling priority (lower is served first). With API keys, the ingress sets it from
    # the key's tier (deployments/ingress/tenancy/metering.py): a client cannot jump the queue.
    priority: int = Field(0, ge=-(2**31), le=2**31 - 1)

    @field_validator("stop")
    @classmethod
    def _stop_limits(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if value == "" or (isinstance(value, list) and any(s == "" for s in value)):
            raise ValueError("stop sequences must be non-empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not (key.isascii() and key.isdigit()):
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError("logit_bias values must lie in [-100, 100]")
        return value

    _stream_options_need_stream = field_validator("stream_options")(
        only_when_true("stream", "stream_options is only allowed when stream is true")
    )

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def output_limit_param(self) -> str:
        """The OUTPUT_LIMIT field that applies: the first one set, else the last (a 400 names it)."""
        return next(
            (name for name in self.OUTPUT_LIMIT if getattr(self, name) is not None), self.OUTPUT_LIMIT[-1]
        )

    def output_limit(self) -> int | None:
        """The most tokens the request may generate; None leaves it to the context left."""
        limit: int | None = getattr(self, self.output_limit_param())
        return limit

    def to_sampling_spec(
        self,
        *,
        prompt_tokens: int,
        max_model_len: int,
        logprobs: int | None,
        vocab_size: int | None = None,
        structured: StructuredOutput | None = None,
    ) -> SamplingSpec:
        """This request's engine sampling for a prompt of `prompt_tokens`, rejecting (400) what the
        model cannot honour: no room left in the context, min_tokens above the output limit, bias
        on token ids outside the vocabulary."""
        room = max_model_len - prompt_tokens
        requested = self.output_limit()
        if room < 1:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {max_model_len} tokens; the prompt has "
                f"{prompt_tokens} tokens and leaves no room for output.",
                param="messages" if hasattr(self, "messages") else "prompt",
            )
        if self.min_tokens > (requested or room):
            raise InvalidRequest(
                f"min_tokens {self.min_tokens} exceeds the {requested or room} tokens this "
                "request may generate (max_tokens, or the context left)",
                param="min_tokens",
            )
        if requested is not None and requested > room:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {max_model_len} tokens. The prompt has "
                f"{prompt_tokens} tokens and max_tokens asks for {requested}; at most {room} fit.",
                param=self.output_limit_param(),
            )
        bias = None
        if self.logit_bias:
            bias = {int(token): value for token, value in self.logit_bias.items()}
            if vocab_size is not None and any(token >= vocab_size for token in bias):
                raise InvalidRequest(
                    f"logit_bias names a token id outside the vocabulary (size {vocab_size})",
                    param="logit_bias",
                )
        return SamplingSpec(
            max_tokens=requested or room,
            temperature=DEFAULT_TEMPERATURE if self.temperature is None else self.temperature,
            top_p=DEFAULT_TOP_P if self.top_p is None else self.top_p,
            n=self.n,
            stop=tuple(self.stop_list()),
            seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logprobs=logprobs,
            logit_bias=bias,
            top_k=0 if self.top_k in (None, -1) else self.top_k,
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            repetition_penalty=self.repetition_penalty or 1.0,
            structured=structured,
            priority=self.priority,
        )
