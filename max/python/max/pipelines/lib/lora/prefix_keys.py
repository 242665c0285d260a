"""Prefix-cache keys of a request that runs a LoRA adapter.

The keys and values of a page depend on the adapter (its k and v projections, and every
layer below), so two adapters, or an adapter and the base model, must never share prefix
pages. The prefix cache hashes each page's key tokens; a request with an adapter keys its
tokens with the adapter's registration number mixed into their high bits: token ids are
below 2**32 and image key tokens (negative) keep their sign and low bits, so each adapter's
keys form a space of their own.
"""

from __future__ import annotations

from collections.abc import Sequence


class AdapterKeyedTokens(Sequence[int]):
    """`tokens` (a list, or image-keyed tokens) as the prefix cache keys them for adapter
    registration number `uid` (1 <= uid < 2**23)."""

    def __init__(self, tokens: Sequence[int], uid: int) -> None:
        if not 0 < uid < 2**23:
            raise ValueError(f"adapter number {uid} is outside 1..2**23-1")
        self._tokens = tokens
        self._mask = uid << 32

    def __len__(self) -> int:
        return len(self._tokens)

    def __getitem__(self, index):  # int or slice, as a list would answer
        if isinstance(index, slice):
            return [t ^ self._mask for t in self._tokens[index]]
        return self._tokens[index] ^ self._mask
