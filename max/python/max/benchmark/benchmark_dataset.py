"""Benchmark workloads: the requests a benchmark sends, as `vllm bench` and `max benchmark`
build them.

- `random`: prompts of random token ids. Input and output lengths are drawn uniformly from
  [len * (1 - ratio), len * (1 + ratio)] (`--random-range-ratio`; 0 = fixed lengths). No
  tokenizer is needed unless the prompts must be text (chat endpoint).
- `sharegpt`: a ShareGPT-format JSON file (a list of {"conversations": [{"from", "value"}]}):
  the first human turn is the prompt, the length of the reply that follows it is the
  output length. Lengths are counted with a tokenizer when there is one (else estimated at
  four characters per token); too short or too long pairs are skipped, as vLLM does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from max.errors import MaxError

DATASETS = ("random", "sharegpt")

# ShareGPT pairs outside these bounds are skipped (vLLM's limits), unless the output
# length is fixed by --sharegpt-output-len.
_MIN_LEN = 4
_MAX_PROMPT_LEN = 1024
_MAX_TOTAL_LEN = 2048
_CHARS_PER_TOKEN = 4
_HUMAN = ("human", "user")


class Tokenizer(Protocol):
    """What a workload needs of a tokenizer (`TextTokenizer` has it)."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass
class SampleRequest:
    """One request of a workload: its prompt (text or token ids) and lengths in tokens."""

    prompt: str | list[int]
    prompt_len: int
    output_len: int
    images: list = field(default_factory=list)  # ImageInput of a vision-language prompt


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """The workload flags shared by benchmark_serving and benchmark_throughput."""
    g = parser.add_argument_group("workload")
    g.add_argument("--dataset", "--dataset-name", dest="dataset", choices=DATASETS, default="random")
    g.add_argument("--dataset-path", help="ShareGPT-format JSON file (--dataset sharegpt)")
    g.add_argument("--num-prompts", type=int, default=1000, help="requests to send (default 1000)")
    g.add_argument("--random-input-len", type=int, default=1024, help="prompt tokens (random)")
    g.add_argument("--random-output-len", type=int, default=128, help="output tokens (random)")
    g.add_argument(
        "--random-range-ratio",
        type=float,
        default=0.0,
        help="lengths drawn uniformly from [len*(1-r), len*(1+r)] (default 0: fixed)",
    )
    g.add_argument(
        "--random-vocab-size",
        type=int,
        help="draw random ids below this (default: the model's vocabulary size)",
    )
    g.add_argument("--sharegpt-output-len", type=int, help="fix every ShareGPT output length")
    g.add_argument("--seed", type=int, default=0, help="seed of the workload (and dummy weights)")


def sample_lengths(
    rng: np.random.Generator, mean_len: int, range_ratio: float, count: int, minimum: int = 1
) -> list[int]:
    """`count` integer lengths uniform in [mean*(1-r), mean*(1+r)], at least `minimum`."""
    if not 0.0 <= range_ratio < 1.0:
        raise MaxError(f"--random-range-ratio must be in [0, 1) (got {range_ratio})")
    low = max(minimum, math.floor(mean_len * (1.0 - range_ratio)))
    high = max(low, math.ceil(mean_len * (1.0 + range_ratio)))
    return [int(x) for x in rng.integers(low, high + 1, size=count)]


def random_requests(
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    vocab_size: int,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
) -> list[SampleRequest]:
    """Prompts of random token ids (decoded to text only if `tokenizer` is given)."""
    if input_len < 1 or output_len < 1:
        raise MaxError("--random-input-len and --random-output-len must be at least 1")
    if vocab_size < 2:
        raise MaxError(f"the vocabulary size must be at least 2 (got {vocab_size})")
    rng = np.random.default_rng(seed)
    input_lens = sample_lengths(rng, input_len, range_ratio, num_prompts)
    output_lens = sample_lengths(rng, output_len, range_ratio, num_prompts)
    requests = []
    for n, out in zip(input_lens, output_lens):
        ids = [int(t) for t in rng.integers(0, vocab_size, size=n)]
        prompt: str | list[int] = tokenizer.decode(ids) if tokenizer is not None else ids
        requests.append(SampleRequest(prompt, n, out))
    return requests


def _first_exchange(entry: object) -> tuple[str, str] | None:
    """(first human turn, the reply after it) of a ShareGPT entry, if it has both."""
    if not isinstance(entry, dict):
        return None
    turns = entry.get("conversations") or entry.get("conversation")
    if not isinstance(turns, list):
        return None
    for i, turn in enumerate(turns[:-1]):
        if not isinstance(turn, dict) or turn.get("from") not in _HUMAN:
            continue
        reply = turns[i + 1]
        prompt, answer = turn.get("value"), reply.get("value") if isinstance(reply, dict) else None
        if isinstance(prompt, str) and isinstance(answer, str) and reply.get("from") not in _HUMAN:
            return prompt, answer
        return None
    return None


def _count(tokenizer: Tokenizer | None, text: str) -> int:
    if tokenizer is None:
        return max(1, math.ceil(len(text) / _CHARS_PER_TOKEN))
    return len(tokenizer.encode(text))


def sharegpt_requests(
    path: str | Path,
    num_prompts: int,
    tokenizer: Tokenizer | None = None,
    seed: int = 0,
    output_len: int | None = None,
) -> list[SampleRequest]:
    """Requests from a ShareGPT-format file, shuffled with `seed` (see the module docstring)."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except OSError as e:
        raise MaxError(f"cannot read the dataset {path}: {e}") from None
    except ValueError as e:
        raise MaxError(f"the dataset {path} is not valid JSON: {e}") from None
    if not isinstance(entries, list):
        raise MaxError(f"the dataset {path} must hold a JSON list of conversations")
    pairs = [p for p in (_first_exchange(e) for e in entries) if p is not None]
    order = np.random.default_rng(seed).permutation(len(pairs))
    requests: list[SampleRequest] = []
    for index in order:
        if len(requests) == num_prompts:
            break
        prompt, answer = pairs[index]
        prompt_len = _count(tokenizer, prompt)
        out_len = output_len if output_len is not None else _count(tokenizer, answer)
        if output_len is None and (
            prompt_len < _MIN_LEN
            or out_len < _MIN_LEN
            or prompt_len > _MAX_PROMPT_LEN
            or prompt_len + out_len > _MAX_TOTAL_LEN
        ):
            continue
        requests.append(SampleRequest(prompt, prompt_len, out_len))
    if not requests:
        raise MaxError(f"the dataset {path} holds no usable conversation (a human turn and a reply)")
    if len(requests) < num_prompts:
        print(f"note: {path} gave {len(requests)} usable prompts of the {num_prompts} asked for", file=sys.stderr)
    return requests


def build_requests(args: argparse.Namespace, vocab_size: int | None, tokenizer: Tokenizer | None, text: bool = False) -> list[SampleRequest]:
    """The workload the flags describe. `text`: prompts must be text (needs a tokenizer
    for the random dataset)."""
    if args.num_prompts < 1:
        raise MaxError("--num-prompts must be at least 1")
    if args.dataset == "sharegpt":
        if not args.dataset_path:
            raise MaxError("--dataset sharegpt needs --dataset-path FILE.json")
        return sharegpt_requests(args.dataset_path, args.num_prompts, tokenizer, args.seed, args.sharegpt_output_len)
    if text and tokenizer is None:
        raise MaxError("text prompts from the random dataset need a tokenizer: pass --tokenizer")
    vocab = args.random_vocab_size or vocab_size or (tokenizer.vocab_size if tokenizer else None)
    if vocab is None:
        raise MaxError("cannot tell the vocabulary size: pass --random-vocab-size or --model-path")
    return random_requests(
        args.num_prompts,
        args.random_input_len,
        args.random_output_len,
        args.random_range_ratio,
        vocab,
        args.seed,
        tokenizer if text else None,
    )
