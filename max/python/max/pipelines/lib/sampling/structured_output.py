"""Constrained decoding: a grammar limits which tokens a request may draw next.

A request's `SamplingParams.structured_output` names its constraint (a JSON schema, any JSON
object, a regular expression, a list of choices, or a Lark grammar). llguidance compiles it
to a grammar; in the engine each constrained request gets its own matcher (`LLMatcher`),
which computes, before every draw, a bitmask of the tokens that keep the output a prefix of
the grammar's language, and consumes the token drawn. The sampler applies the masks of the
constrained rows only (`apply_token_bitmask`): unconstrained rows are left bit for bit as
they were, and a batch without any constraint does no work at all.

Compiled grammars are cached by their spec (`grammar_for`), and a fresh matcher of each
grammar is kept so that new requests copy it instead of compiling again.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from copy import copy
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from max.errors import MaxError

logger = logging.getLogger("max.pipelines.structured_output")

KINDS = ("json_schema", "json_object", "regex", "choice", "lark")

# Compact JSON with the usual spacing: a small model cannot wander off into whitespace
# (and run out of tokens before the closing brace).
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class StructuredOutput:
    """A request's output constraint (picklable, hashable: the grammar cache's key).

    `kind` is one of KINDS; `spec` is the JSON text of the schema (json_schema), the regular
    expression (regex), the JSON list of strings (choice) or the Lark grammar (lark); empty
    for json_object. `strict` (json_schema): objects that leave `additionalProperties` unsaid
    admit no other properties, as OpenAI's strict mode requires of its schemas.
    """

    kind: str
    spec: str = ""
    strict: bool = False


def _strict_schema(node: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that does not say."""
    if isinstance(node, list):
        return [_strict_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict_schema(v) for k, v in node.items()}
    if (out.get("type") == "object" or "properties" in out) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=512)
def grammar_for(constraint: StructuredOutput) -> str:
    """The llguidance grammar of a constraint; raises MaxError naming what is unsupported
    or wrong (unimplemented schema keywords, regex features, grammar syntax)."""
    from llguidance import LLMatcher

    kind, spec = constraint.kind, constraint.spec
    try:
        if kind == "json_object":
            grammar = LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_OPTIONS)
        elif kind == "json_schema":
            schema = json.loads(spec)
            if constraint.strict:
                schema = _strict_schema(schema)
            grammar = LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
        elif kind == "regex":
            grammar = LLMatcher.grammar_from_regex(spec)
        elif kind == "choice":
            choices = json.loads(spec)
            grammar = LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))
        elif kind == "lark":
            grammar = LLMatcher.grammar_from_lark(spec)
        else:
            raise MaxError(f"unknown structured output kind {kind!r} (known: {', '.join(KINDS)})")
    except ValueError as e:
        raise MaxError(f"invalid {kind} constraint: {e}") from None
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise MaxError(f"unsupported {kind} constraint: {'; '.join(messages)}")
    return grammar


def bitmask_words(vocab_size: int) -> int:
    """32-bit words of one row's token bitmask."""
    return (vocab_size + 31) // 32


_BIT = torch.arange(32, dtype=torch.int32)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """`logits` [N, vocab] with the tokens that `bitmask` [len(rows), words] (int32, bit v of
    a row: token v allowed) forbids set to -inf in the given rows; other rows are the same
    values (a new tensor: the model's output buffers are left alone)."""
    vocab = logits.shape[1]
    device = logits.device
    mask = bitmask.to(device, non_blocking=True)
    allowed = ((mask.unsqueeze(-1) >> _BIT.to(device)) & 1).bool().reshape(len(rows), -1)
    if allowed.shape[1] < vocab:  # ids past the mask (a padded embedding) are never allowed
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=False)
    index = torch.tensor(list(rows), device=device)
    masked = logits.index_select(0, index).masked_fill(~allowed[:, :vocab], float("-inf"))
    return logits.index_put((index,), masked)


def _byte_alphabet() -> frozenset[str]:
    """The characters of GPT-2's byte-to-unicode map: byte-level BPE vocabularies spell each
    byte as one of them ('Ġ' is the space, 'Ċ' the newline)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = [0x100 + i for i in range(256 - len(printable))]
    return frozenset(map(chr, printable + shifted))


_BYTE_ALPHABET = _byte_alphabet()
_BYTE_LEVEL_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}


def _is_byte_level_vocab(model: Any) -> bool:
    """Whether a tokenizer model (its JSON) is a byte-level BPE: it has the space token 'Ġ'
    and (all but a few odd entries of) its vocabulary is spelt in the byte alphabet."""
    if not isinstance(model, dict) or model.get("type") != "BPE":
        return False
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or "\u0120" not in vocab:
        return False
    spelt = sum(1 for piece in vocab if _BYTE_ALPHABET.issuperset(piece))
    return spelt >= 0.99 * len(vocab)


def _byte_level_tokenizer_json(hf_tokenizer: Any) -> str | None:
    """The tokenizer's JSON, with a plain ByteLevel decoder, when its vocabulary is byte-level
    but its decoder is not ByteLevel itself; None when llguidance can read it as it is.

    llguidance learns how tokens spell bytes from the decoder: a top-level ByteLevel means
    byte-level, while a Sequence with ByteFallback is read as SentencePiece-like (pieces are
    their UTF-8 text), a nested ByteLevel notwithstanding. Transformers 5.17 converts GPT-2 style GGUF tokenizers (SmolLM2) with the decoder
    Sequence[ByteFallback, Fuse, Replace('▁', ' '), ByteLevel], which decodes right but made
    llguidance take 'Ġ' as the bytes C4 A0 instead of a space.
    """
    from tokenizers import decoders

    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None or isinstance(backend.decoder, decoders.ByteLevel):
        return None
    backend = copy(backend)
    backend.no_padding()
    backend.no_truncation()
    spec = json.loads(backend.to_str())
    if not _is_byte_level_vocab(spec.get("model")):
        return None
    logger.debug("byte-level vocabulary with decoder %s: llguidance gets a ByteLevel decoder", spec.get("decoder"))
    spec["decoder"] = dict(_BYTE_LEVEL_DECODER)
    return json.dumps(spec, ensure_ascii=False)


class GrammarBackend:
    """llguidance over the model's tokenizer: makes matchers and fills their masks.

    Built once per engine, on the first constrained request (wrapping the tokenizer takes
    about a second).
    """

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        import llguidance
        import llguidance.hf

        self.vocab_size = max(vocab_size, len(hf_tokenizer))
        eos = sorted(eos_token_ids) or None
        fixed = _byte_level_tokenizer_json(hf_tokenizer)
        if fixed is None:
            self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=self.vocab_size, eos_token=eos)
        else:
            if eos is None:
                eos = hf_tokenizer.eos_token_id
            self.tokenizer = llguidance.LLTokenizer(fixed, n_vocab=self.vocab_size, eos_token=eos)
        self.executor = llguidance.LLExecutor(num_threads=2)
        self._fresh: OrderedDict[StructuredOutput, Any] = OrderedDict()
        self._max_cached = 256

    def matcher(self, constraint: StructuredOutput) -> Any:
        """A new matcher at the start of the constraint's grammar (raises MaxError)."""
        from llguidance import LLMatcher

        fresh = self._fresh.get(constraint)
        if fresh is None:
            fresh = LLMatcher(self.tokenizer, grammar_for(constraint), log_level=0)
            if fresh.is_error():
                raise MaxError(f"unsupported {constraint.kind} constraint: {fresh.get_error()}")
            self._fresh[constraint] = fresh
            if len(self._fresh) > self._max_cached:
                self._fresh.popitem(last=False)
        else:
            self._fresh.move_to_end(constraint)
        return fresh.deep_copy()

    def fill_bitmask(self, matchers: Sequence[Any]) -> torch.Tensor:
        """int32 [len(matchers), words]: the next-token masks, computed in parallel."""
        bitmask = torch.empty((len(matchers), bitmask_words(self.vocab_size)), dtype=torch.int32)
        self.executor.unsafe_compute_mask_ptr(
            [(m, i) for i, m in enumerate(matchers)], bitmask.data_ptr(), bitmask.shape[1] * 4, len(matchers)
        )
        return bitmask
