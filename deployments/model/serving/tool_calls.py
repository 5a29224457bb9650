"""Tool calls of one chat choice, whole or streamed.

A forced call (`tool_choice` named or `required`) was decoded under a JSON-schema constraint, so its
text *is* the arguments object (named) or a JSON array of `{"name", "parameters"}` (required). An
`auto` call is found in the model's native markup by the model's vLLM tool parser.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from serve_app.engine_api import CallChunk, ToolCallParser
from serve_app.tools import (
    FunctionCall,
    FunctionCallDelta,
    NamedToolChoice,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    escape_control_characters,
    forced_calls,
    new_call_id,
)


def finish_with_calls(finish_reason: str | None, called: bool) -> str | None:
    """OpenAI says `tool_calls` when a complete answer is calls; a cut one stays `length`."""
    return "tool_calls" if called and finish_reason == "stop" else finish_reason


def to_delta(call: ToolCall, index: int) -> ToolCallDelta:
    return ToolCallDelta(
        index=index,
        id=call.id,
        type="function",
        function=FunctionCallDelta(name=call.function.name, arguments=call.function.arguments),
    )


def chunk_delta(chunk: CallChunk) -> ToolCallDelta:
    return ToolCallDelta(
        index=chunk.index,
        id=chunk.id,
        type="function" if chunk.id is not None else None,
        function=FunctionCallDelta(name=chunk.name, arguments=chunk.arguments),
    )


@dataclass
class ChoiceTools:
    """Turns one choice's answer text into content and tool calls, for the request's tool mode."""

    mode: str
    tool_choice: ToolChoice | None
    parser: ToolCallParser | None = None
    json_output: bool = False  # decoded under a JSON constraint (forced call or response_format)
    called: bool = False
    _buffer: str = ""
    _named_id: str | None = None
    _streamed_chunks: list[ToolCallDelta] = field(default_factory=list)

    def whole(
        self, content: str | None, finish_reason: str | None
    ) -> tuple[str | None, list[ToolCall] | None, str | None]:
        """(content, tool calls, finish reason) of a complete answer."""
        if self.json_output and content:
            content = escape_control_characters(content)
        text = content or ""
        if self.mode in ("named", "required"):
            calls = forced_calls(self.mode, text, self.tool_choice)
            if calls is None and self.mode == "named" and isinstance(self.tool_choice, NamedToolChoice):
                # Cut short (finish_reason "length"): the partial arguments, as OpenAI returns them.
                name = self.tool_choice.function.name
                calls = [ToolCall(id=new_call_id(), function=FunctionCall(name=name, arguments=text))]
            if calls is None:
                return content, None, finish_reason
            return None, calls, finish_with_calls(finish_reason, True)
        if self.mode == "auto" and self.parser is not None:
            rest, parsed = self.parser.extract(text)
            if parsed:
                calls = [
                    ToolCall(id=new_call_id(), function=FunctionCall(name=p.name, arguments=p.arguments))
                    for p in parsed
                ]
                return rest or None, calls, finish_with_calls(finish_reason, True)
        return content, None, finish_reason

    def delta(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_ids: Sequence[int],
        current_ids: Sequence[int],
        delta_ids: Sequence[int],
        finish_reason: str | None,
    ) -> tuple[str | None, list[ToolCallDelta]]:
        """(content, tool-call deltas) to stream for new answer text."""
        if self.json_output:
            delta_text = escape_control_characters(delta_text)
        if self.mode == "named":
            return None, self._named_delta(delta_text)
        if self.mode == "required":
            return self._required_delta(delta_text, finish_reason)
        if self.mode == "auto" and self.parser is not None:
            content, chunks = self.parser.extract_delta(
                previous_text, current_text, delta_text, previous_ids, current_ids, delta_ids
            )
            self.called = self.called or bool(chunks)
            return content, [chunk_delta(c) for c in chunks]
        return delta_text or None, []

    def _named_delta(self, delta_text: str) -> list[ToolCallDelta]:
        # The constrained text is the arguments object itself: stream it as it comes.
        assert isinstance(self.tool_choice, NamedToolChoice)
        if self._named_id is None:
            self._named_id, self.called = new_call_id(), True
            first = ToolCallDelta(
                index=0,
                id=self._named_id,
                type="function",
                function=FunctionCallDelta(name=self.tool_choice.function.name, arguments=delta_text),
            )
            return [first]
        if not delta_text:
            return []
        return [ToolCallDelta(index=0, function=FunctionCallDelta(arguments=delta_text))]

    def _required_delta(
        self, delta_text: str, finish_reason: str | None
    ) -> tuple[str | None, list[ToolCallDelta]]:
        # The array is only known to be complete at the end: each call goes out whole then.
        self._buffer += delta_text
        if finish_reason is None:
            return None, []
        calls = forced_calls("required", self._buffer, self.tool_choice)
        if calls is None:  # cut short: what there is, as content
            return self._buffer or None, []
        self.called = True
        return None, [to_delta(call, i) for i, call in enumerate(calls)]

    def finish_reason(self, finish_reason: str | None) -> str | None:
        return finish_with_calls(finish_reason, self.called)
