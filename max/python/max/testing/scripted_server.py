"""The HTTP server over a scripted engine and SmolLM2's tokenizer, on a local port: for
tests that send requests with the official clients (`openai`, `anthropic`) and need to
know the model's text (a tool call, a thinking block) and to read back what each request
brought (its prompt, its sampling parameters).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer

from max.pipelines.lib import SamplingParams, TextTokenizer
from max.serve.api_server import ServerState, create_app
from max.testing.app_server import AppServer
from max.testing.scripted_engine import ScriptedEngine
from max.testing.tiny_tokenizer import TOKENIZER_VOCAB, tokenizer_dir


def smollm2_tokenizer() -> TextTokenizer:
    """SmolLM2's tokenizer (its chat template included), from the embedded files."""
    return TextTokenizer(AutoTokenizer.from_pretrained(str(tokenizer_dir())), set())


class ScriptedServer:
    """`create_app` over a `ScriptedEngine` (`tokens_per_output` ids an output, reporting
    `num_cached_tokens` prompt tokens from the prefix cache), served until `stop()` or the
    end of a `with` block; `state` sets more `ServerState` fields (served_model_name,
    api_key, reasoning_parser, ...)."""

    def __init__(self, tokens_per_output: int = 2, num_cached_tokens: int = 0, **state: Any) -> None:
        self.tokenizer = smollm2_tokenizer()
        self.engine = ScriptedEngine(tokens_per_output=tokens_per_output, num_cached_tokens=num_cached_tokens)
        fields = {"max_seq_len": 1024, "vocab_size": TOKENIZER_VOCAB, **state}
        self._server = AppServer(create_app(ServerState(tokenizer=self.tokenizer, engine=self.engine, **fields)))
        self.url = self._server.url

    def say(self, text: str) -> None:
        """The answer of the next requests: `text`, as the model's tokens."""
        self.engine.say(self.tokenizer.encode(text, add_special_tokens=False))

    def last_prompt_ids(self) -> list[int]:
        """The prompt token ids of the last request the engine received."""
        return self.engine.received[next(reversed(self.engine.received))][0]

    def last_prompt(self) -> str:
        """The last request's prompt as text (special tokens included)."""
        return self.tokenizer.decode(self.last_prompt_ids(), skip_special_tokens=False)

    def last_params(self) -> SamplingParams:
        """The sampling parameters of the last request."""
        return self.engine.params[next(reversed(self.engine.params))]

    def stop(self) -> None:
        """Stops serving."""
        self._server.stop()

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
