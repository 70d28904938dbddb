"""Decoders: feed a Transformer-XL a stream one token at a time and return next-token logits.

Thin loops over the model's own methods. Each has ``prefill(tokens (B, P)) -> Predicted`` (once,
first) and ``step(tok (B,)) -> Predicted`` (the next token's distribution: ``.logits`` (B, V),
``.sample(temperature, top_k, top_p, generator)``), and gives the context segment-by-segment evaluation
gives (segments of ``tgt_len`` from the stream's first token; each attends to its own earlier tokens
plus the ``mem_len`` positions before the segment), so all give the same logits up to float rounding:

- :class:`CachedDecoder`: ``model.step`` over the model's ring-buffer cache (``model.init_cache``):
  one token costs attention over the cached keys and values. On CUDA the one-token step (fixed shapes,
  the position on the device, no host synchronisation) is captured once as a CUDA graph and replayed:
  per-token launch overhead is what limits small-batch decoding on a GPU.
- :class:`ReferenceDecoder`: decoding by *feeding memories back*: ``model(token, mems=context)``
  re-projects the whole context every token (O(context x d^2) per layer). Slow and obviously right.

Each decoder owns its cache or context for one stream batch; the model keeps no state.

Shape letters: B = batch, P = prompt length, V = vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from txl_audio.config import Lengths
from txl_audio.model import Memory, TransformerXL
from txl_audio.model.sampling import Predicted


class CachedDecoder:
    """``model.step`` over a ring-buffer cache; ``cuda_graph`` (default: on CUDA) replays the one-token
    step as a CUDA graph after a few eager steps."""

    # CUDA graphs want a few eager runs (on a side stream) before capture; these are real steps of
    # the stream, so nothing is wasted or repeated
    EAGER_STEPS = 3

    def __init__(self, model: TransformerXL, batch_size: int, lengths: Lengths | None = None,
                 cuda_graph: bool | None = None) -> None:
        self.model = model
        self.cache = model.init_cache(batch_size, lengths)
        device = self.cache.t.device
        self.use_graph = (device.type == "cuda") if cuda_graph is None else cuda_graph
        if self.use_graph and device.type != "cuda":
            raise ValueError("cuda_graph=True needs the model on a CUDA device")
        self.tok = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # the graph's input
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: Predicted | None = None  # the graph's output: the head's parameters
        self.eager_steps = 0

    def prefill(self, tokens: Tensor) -> Predicted:
        """Feed ``tokens (B, P)``: ``model.step`` takes whole segments per call."""
        return self.model.step(tokens, self.cache).last()

    def step(self, tok: Tensor) -> Predicted:
        if not self.use_graph:
            return self.model.step(tok.view(-1, 1), self.cache).last()
        self.tok.copy_(tok.view(-1, 1))
        # a compressive model compresses at segment boundaries, outside the graph (no-op otherwise)
        self.model.compress_cache(self.cache)
        if self.graph is None:
            if self.eager_steps < self.EAGER_STEPS:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    out = self.model.step(self.tok, self.cache).last()
                torch.cuda.current_stream().wait_stream(side)
                self.eager_steps += 1
                return out
            position = self.cache.position
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.model.step(self.tok, self.cache)  # recorded, not run
            self.cache.position = position  # the recording ran the Python, not the step
        self.graph.replay()
        self.cache.position += 1  # the host's copy of the position; the device's moved in the graph
        return self.out.last()


class ReferenceDecoder:
    """Decoding by feeding memories back: every token runs ``model(token, mems=context)`` and its
    per-layer hidden states are appended to ``context``; at each segment boundary (every tgt_len
    tokens from the stream's start) the context is cut to the last mem_len positions, exactly the
    memory training carried into the next segment.

    With mem_len = 0 the model keeps no hidden states, so the current segment's tokens are recomputed
    from scratch every step instead (a plain segment model's decoding).

    A compressive model's context carries its compressed memory along: the states cut at a boundary
    are compressed into it (``model.forget``), as the forward pass compresses what leaves its memory."""

    def __init__(self, model: TransformerXL, batch_size: int, lengths: Lengths | None = None) -> None:
        self.model = model
        self.lengths = model.config.lengths() if lengths is None else lengths
        self.context: Memory | None = None  # the visible past's hidden states
        self.segment: list[Tensor] = []  # mem_len = 0: this segment's tokens so far, each (B, 1)
        self.segment_past: Memory | None = None  # mem_len = 0: what the segment starts with (history)
        self.position = 0  # stream position of the next token fed

    def _feed(self, tok: Tensor) -> Predicted:  # (B, 1) -> the next token's prediction (B,)
        L = self.lengths
        if L.mem_len == 0:
            self.segment.append(tok)
            # the whole segment so far (and the prior's history from before it)
            o = self.model(torch.cat(self.segment, dim=1), mems=self.segment_past, lengths=L)
            logits = o.predicted.last()
            if len(self.segment) == L.tgt_len:
                self.segment_past = o.mems
        else:
            o = self.model(tok, mems=self.context, lengths=L)
            logits = o.predicted.last()
            new = o.mems.last(1)  # this token's input to every layer, (B, 1, D) each
            self.context = new if self.context is None else self.context.append(new)
        self.position += 1
        if self.position % L.tgt_len == 0:  # segment boundary: keep what training kept as memory
            self.segment.clear()
            if self.context is not None:
                # (a compressive model compresses the states that leave, as its forward pass does)
                self.context = self.model.forget(self.context, L)
        return logits

    def prefill(self, tokens: Tensor) -> Predicted:
        """Whole segments of a prompt go through the model as in evaluation (their memory is the same
        context token-by-token feeding would build); the rest is fed one token at a time."""
        L = self.lengths
        P = tokens.shape[1]
        full = P // L.tgt_len * L.tgt_len if self.position == 0 else 0
        logits = None
        for s in range(0, full, L.tgt_len):
            past = self.context if L.mem_len > 0 else self.segment_past
            o = self.model(tokens[:, s : s + L.tgt_len], mems=past, lengths=L)
            logits = o.predicted.last()
            if L.mem_len > 0:
                self.context = o.mems.hidden_only()
            else:
                self.segment_past = o.mems
        self.position += full
        for t in range(full, P):
            logits = self._feed(tokens[:, t : t + 1])
        return logits

    def step(self, tok: Tensor) -> Predicted:
        return self._feed(tok.view(-1, 1))


DECODERS = ("cached", "reference")


def make_decoder(model: TransformerXL, batch_size: int, kind: str = "cached", cuda_graph: bool | None = None,
                 lengths: Lengths | None = None):
    """``kind``: "cached" (``model.step`` over a ring buffer; a CUDA graph on CUDA unless
    ``cuda_graph=False``) or "reference" (feeding memories back)."""
    if kind == "cached":
        return CachedDecoder(model, batch_size, lengths, cuda_graph)
    if kind == "reference":
        return ReferenceDecoder(model, batch_size, lengths)
    raise ValueError(f"decoder kind must be one of {', '.join(DECODERS)}, got {kind!r}")
