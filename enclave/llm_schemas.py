"""OpenAI request bodies for /v1/completions and /v1/chat/completions, as pydantic models.

Strict types (a string is not a number, 1 is not true) and no unknown fields, as OpenAI's own API:
an argument the server would silently ignore is refused, because the receipt's inputHash covers the
body and a client must not believe a parameter was honoured when it was not. Parameters OpenAI has and
this server does not implement (n > 1, logprobs, penalties, tools...) are accepted only at their default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

MAX_STOP = 4
Probability = Annotated[StrictFloat | StrictInt, Field(ge=0, le=1)]
Temperature = Annotated[StrictFloat | StrictInt, Field(ge=0, le=2)]
Penalty = Annotated[StrictFloat | StrictInt, Field(ge=-2, le=2)]
Seed = Annotated[StrictInt, Field(ge=-(2**63), lt=2**63)]
TokenCount = Annotated[StrictInt, Field(ge=1, lt=2**31)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class _Sampling(_Strict):
    model: StrictStr
    max_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    seed: Seed | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt = 1
    user: StrictStr | None = None
    presence_penalty: Penalty = 0
    frequency_penalty: Penalty = 0
    logit_bias: dict[StrictStr, StrictFloat | StrictInt] | None = None
    # vLLM's and llama-server's extension: generate through end-of-sequence (benchmarks)
    ignore_eos: StrictBool = False


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictStr] | list[StrictInt]
    echo: StrictBool = False
    logprobs: StrictInt | None = None
    best_of: StrictInt | None = None
    suffix: StrictStr | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None

    def as_template_message(self) -> dict[str, Any]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: TokenCount | None = None
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: StrictBool | None = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class OpenAIErrorBody(BaseModel):
    """Every refusal under /v1, in OpenAI's shape."""

    error: OpenAIErrorDetail
