"""OpenAI wire models: requests, responses, stream chunks, errors, and the orchestration extension.

Requests are `extra="forbid"` so that a parameter this service would silently ignore is instead
rejected with a 400 naming it. Fields OpenAI clients send routinely but that change nothing about
generation (`user`, `metadata`, `store`, `service_tier`) are accepted explicitly.

One module per part of the API; everything is importable from `serve_app.protocol`."""

from serve_app.errors import ErrorDetail, ErrorResponse
from serve_app.protocol.base import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    MAX_CRITIQUE_ROUNDS,
    MAX_STOP_SEQUENCES,
    MAX_TOP_LOGPROBS,
    FinishReason,
    Request,
    Response,
    StreamOptions,
    Text,
    Usage,
    new_id,
    now,
)
from serve_app.protocol.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessage,
    DeltaMessage,
    TextPart,
    TokenLogprob,
    TopLogprob,
)
from serve_app.protocol.completions import (
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from serve_app.protocol.models import (
    ModelCapabilities,
    ModelCard,
    ModelList,
    ModelState,
)
from serve_app.protocol.orchestration import (
    OrchestrationEvent,
    OrchestrationInfo,
    OrchestrationRequest,
    OrchestrationStep,
    StopReason,
)
from serve_app.protocol.sampling import (
    SamplingFields,
)

__all__ = [
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_P",
    "MAX_CRITIQUE_ROUNDS",
    "MAX_STOP_SEQUENCES",
    "MAX_TOP_LOGPROBS",
    "AssistantMessage",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatLogprobs",
    "ChatMessage",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionLogprobs",
    "CompletionRequest",
    "CompletionResponse",
    "DeltaMessage",
    "ErrorDetail",
    "ErrorResponse",
    "FinishReason",
    "ModelCapabilities",
    "ModelCard",
    "ModelList",
    "ModelState",
    "OrchestrationEvent",
    "OrchestrationInfo",
    "OrchestrationRequest",
    "OrchestrationStep",
    "Request",
    "Response",
    "SamplingFields",
    "StopReason",
    "StreamOptions",
    "Text",
    "TextPart",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
    "new_id",
    "now",
]
