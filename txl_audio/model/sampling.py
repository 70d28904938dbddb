"""Choosing a token from a predicted distribution: temperature, top-k, top-p (pure functions), and
:class:`Predicted`, what the model hands a decoder for a position: its output head's parameters, from
which logits, log-probabilities and samples come.

For a softmax head the parameters are the logits themselves. For the 16-bit heads
(:mod:`txl_audio.model.heads`) they are the head's inputs (fixed shapes, so a CUDA graph can return
them); a draw at temperature 1 without top-k/top-p is the head's own exact sampler (no 65,536-level
table is built), and anything else acts on the full distribution over the 65,536 levels, exactly as
for a softmax.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from txl_audio.errors import ArgumentValueError


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Logits with the tokens that top-k / top-p sampling may not emit set to -inf (a new tensor).

    ``top_k``: keep the k highest logits (tokens tied with the k-th are kept too). ``top_p`` (nucleus,
    Holtzman et al. 2020): keep the smallest set of most probable tokens whose probability sums to at
    least p (always at least the most probable one). With both, top-k is applied first and top-p
    works on the renormalized survivors. ``None`` (or k >= V, p >= 1) leaves the logits unchanged.
    Works on any leading shape; the last dimension is the vocabulary.
    """
    vocab = logits.shape[-1]
    out = logits
    if top_k is not None and top_k < vocab:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]  # (..., 1)
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        if not 0.0 < top_p:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        # drop a token when the more probable ones before it already reach p
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """An ArgumentValueError (a ValueError) naming the first sampling setting out of range."""
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ArgumentValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ArgumentValueError(f"top_k must be >= 1 (or left unset), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ArgumentValueError(f"top_p must be in (0, 1] (or left unset), got {top_p}")


def draw(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits (B, V)`` -> ``(B,)`` int64, on the logits' device.

    temperature 0 is greedy (argmax; top-k/top-p do not change it). Otherwise softmax(logits / T)
    restricted by :func:`filter_logits`, sampled as argmax(p / E) with E ~ Exp(1) drawn from
    ``generator``: exact, with no host synchronisation.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature
    x = filter_logits(x, top_k, top_p)
    probs = torch.softmax(x, dim=-1)
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    # a zero draw would turn an excluded token's 0/0 into NaN; the clamp keeps excluded tokens at 0
    return (probs / noise.clamp_min_(1e-30)).argmax(dim=-1)


class Predicted:
    """The model's prediction for some positions: ``head`` (None for a softmax: ``params`` is then
    ``(logits,)``) and ``params``, a tuple of tensors with leading dimensions (..., ) = the positions."""

    def __init__(self, head: Any, params: tuple[torch.Tensor, ...]) -> None:
        self.head, self.params = head, params

    @property
    def shape(self) -> torch.Size:
        """The positions' leading dimensions, e.g. (B,) or (B, n)."""
        p = self.params[0]
        return p.shape[:-1] if self.head is None else p.shape[: self._lead]

    @property
    def _lead(self) -> int:
        # a head's params: the first is (..., D) or (..., 3K): one trailing dimension
        return self.params[0].dim() - 1

    def _flat(self) -> tuple[torch.Tensor, ...]:
        n = self._lead
        return tuple(p.reshape(-1, *p.shape[n:]) for p in self.params)

    @property
    def logits(self) -> torch.Tensor:
        """(..., V) scores whose softmax is the distribution: the logits of a softmax head, the
        log-probabilities of the 65,536 levels for a 16-bit head (built here, from its parameters)."""
        if self.head is None:
            return self.params[0]
        return self.head.log_probs(self._flat()).reshape(*self.shape, -1)

    def log_prob(self, tokens: torch.Tensor) -> torch.Tensor:
        """log p(tokens), tokens with the positions' shape."""
        if self.head is None:
            return torch.log_softmax(self.params[0].float(), -1).gather(-1, tokens[..., None])[..., 0]
        return self.head.log_prob(self._flat(), tokens.reshape(-1)).reshape(tokens.shape)

    def last(self) -> Predicted:
        """The prediction for the last position of (B, n, ...) params: (B, ...)."""
        return Predicted(self.head, tuple(p[:, -1] for p in self.params))

    def sample(
        self,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One token per position (see :func:`draw`); 16-bit heads at temperature 1 with no filter
        draw with their own exact sampler."""
        plain = temperature == 1.0 and top_k is None and (top_p is None or top_p >= 1.0)
        if self.head is not None and plain:
            return self.head.sample(self._flat(), generator).reshape(self.shape)
        return draw(self.logits, temperature, top_k, top_p, generator)
