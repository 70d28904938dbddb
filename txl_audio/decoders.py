"""Decoders: feed a Transformer-XL a stream one token at a time and return next-token logits.

All three give the same logits (up to float rounding) for the same stream: the context a token sees is
the one segment-by-segment evaluation gives it (segments of ``tgt_len`` from the stream's first token;
each attends to its own earlier tokens plus the ``mem_len`` positions before the segment). Each has
``prefill(tokens (B, P)) -> logits (B, V)`` (once, first) and ``step(tok (B,)) -> logits (B, V)``.

- :class:`CachedDecoder`: the model's own key/value cache (``model.init_cache`` / ``model.step``).
- :class:`ReferenceDecoder`: decoding by *feeding memories back*: ``model(token, mems=context)``
  re-projects the whole context every token (O(context x d^2) per layer). Slow and obviously right.
- :class:`StaticDecoder`: the same attention over a fixed-size ring buffer of keys and values, with
  the stream position kept on the device, so every step runs the same kernels on the same shapes
  with no host synchronisation; on CUDA the step is captured once as a CUDA graph and replayed
  (per-token launch overhead is what limits small-batch decoding on a GPU).

Shape letters: B = batch, H = heads, Dh = head size, D = d_model, V = vocabulary,
W = mem_len + tgt_len ring-buffer slots (a position p lives in slot p mod W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("decoding needs a txl_audio TransformerXL (a model with .config)")
    return config


def prompt_chunks(n_tokens: int, tgt_len: int) -> list[tuple[int, int]]:
    """[start, end) pieces of a prompt that never cross a segment boundary (multiples of tgt_len)."""
    return [(s, min(s + tgt_len, n_tokens)) for s in range(0, n_tokens, tgt_len)]


class CachedDecoder:
    """Decoding with the model's key/value cache: ``model.init_cache`` / ``model.step``."""

    def __init__(self, model: nn.Module, batch_size: int) -> None:
        self.model = model
        self.tgt_len = _config(model).tgt_len
        self.cache = model.init_cache(batch_size)

    def prefill(self, tokens: Tensor) -> Tensor:
        """Feed ``tokens (B, P)`` in segment-aligned chunks (one model call per segment)."""
        logits = None
        for s, e in prompt_chunks(tokens.shape[1], self.tgt_len):
            logits, self.cache = self.model.step(tokens[:, s:e], self.cache)
        return logits[:, -1]

    def step(self, tok: Tensor) -> Tensor:
        logits, self.cache = self.model.step(tok.unsqueeze(1), self.cache)
        return logits[:, -1]


class ReferenceDecoder:
    """Decoding by feeding memories back: every token runs ``model(token, mems=context)`` and its
    per-layer hidden states are appended to ``context``; at each segment boundary (every tgt_len
    tokens from the stream's start) the context is cut to the last mem_len positions, exactly the
    memory training carried into the next segment.

    With mem_len = 0 the model keeps no hidden states, so the current segment's tokens are recomputed
    from scratch every step instead (a plain segment model's decoding)."""

    def __init__(self, model: nn.Module, batch_size: int) -> None:
        config = _config(model)
        self.model = model
        self.tgt_len, self.mem_len = config.tgt_len, config.mem_len
        self.context: list[Tensor] | None = None  # per layer (B, C, D)
        self.segment: list[Tensor] = []  # mem_len = 0: this segment's tokens so far, each (B, 1)
        self.position = 0  # stream position of the next token fed

    def _feed(self, tok: Tensor) -> Tensor:  # (B, 1) -> next-token logits (B, V)
        if self.mem_len == 0:
            self.segment.append(tok)
            logits = self.model(torch.cat(self.segment, dim=1)).logits[:, -1]
        else:
            o = self.model(tok, mems=self.context)
            logits = o.logits[:, -1]
            new = [m[:, -1:] for m in o.mems]  # this token's input to every layer, (B, 1, D)
            if self.context is None:
                self.context = new
            else:
                self.context = [torch.cat([c, n], dim=1) for c, n in zip(self.context, new)]
        self.position += 1
        if self.position % self.tgt_len == 0:  # segment boundary: keep what training kept as memory
            self.segment.clear()
            if self.context is not None:
                self.context = [c[:, -self.mem_len :] for c in self.context]
        return logits

    def prefill(self, tokens: Tensor) -> Tensor:
        """Whole segments of a prompt go through the model as in evaluation (their memory is the same
        context token-by-token feeding would build); the rest is fed one token at a time."""
        P = tokens.shape[1]
        full = P // self.tgt_len * self.tgt_len if self.position == 0 else 0
        logits = None
        for s in range(0, full, self.tgt_len):
            o = self.model(tokens[:, s : s + self.tgt_len], mems=self.context)
            logits = o.logits[:, -1]
            if self.mem_len > 0:
                self.context = [m[:, -self.mem_len :] for m in o.mems]
        self.position += full
        for t in range(full, P):
            logits = self._feed(tokens[:, t : t + 1])
        return logits

    def step(self, tok: Tensor) -> Tensor:
        return self._feed(tok.unsqueeze(1))


class StaticDecoder:
    """One token per step over fixed-shape ring buffers; the stream position lives on the device.

    Per step and layer: q, k, v of the new token; k, v written to slot t mod W; scores against all W
    slots = (q + u) k^T (content) + (q + v) r_d (position, d = t - slot position, looked up in a
    per-layer table of the W distances, precomputed), with slots outside the token's context masked:
    a slot is visible iff it holds a position p with 0 <= t - p <= limit(t), where
    limit(t) = mem_len + (t mod tgt_len) is the segment context of evaluation (and at most
    mem_len - 1 with ``same_length``). The layer's residual, norms and feed-forward are the model's own
    modules. The prompt goes through ``model.step`` (whole segments per call), and its cache is copied
    into the ring buffers.

    ``cuda_graph``: capture the step once and replay it (CUDA only; default on CUDA).
    """

    def __init__(self, model: nn.Module, batch_size: int, cuda_graph: bool | None = None) -> None:
        c = _config(model)
        self.model, self.config = model, c
        p = model.word_emb.weight
        dev, dt = p.device, p.dtype
        self.relative = c.attention == "relative"
        self.B, self.W = batch_size, c.mem_len + c.tgt_len
        H, Dh, W = c.n_head, c.d_head, self.W
        self.keys = [torch.zeros(batch_size, H, W, Dh, device=dev, dtype=dt) for _ in model.layers]
        self.values = [torch.zeros(batch_size, H, W, Dh, device=dev, dtype=dt) for _ in model.layers]
        # stream position held by each slot; far in the past = empty (never visible)
        self.slot_pos = torch.full((W,), -(2**40), dtype=torch.long, device=dev)
        self.t = torch.zeros((), dtype=torch.long, device=dev)  # position of the token being fed
        self.tok = torch.zeros(batch_size, dtype=torch.long, device=dev)  # its id (static input)
        self.slots = torch.arange(W, device=dev)
        with torch.no_grad():
            if self.relative:
                # relative keys of the distances 0 .. W-1 (the model's table runs W-1 .. -1)
                pos = model._rel_pos(W, dev, dt)[:W].flip(0)  # (W, D)
                self.rel = [layer.attn.rel_keys(pos).contiguous() for layer in model.layers]  # (H, W, Dh)
            else:  # absolute positions restart at 0 in every segment
                self.abs_pos = model._abs_pos(0, c.tgt_len, dev, dt)  # (tgt_len, D)
        self.use_graph = (dev.type == "cuda") if cuda_graph is None else cuda_graph
        if self.use_graph and dev.type != "cuda":
            raise ValueError("cuda_graph=True needs the model on a CUDA device")
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None
        self.eager_steps = 0

    # ---- prompt -------------------------------------------------------------------------------------

    def prefill(self, tokens: Tensor) -> Tensor:
        """Run the prompt through the model's own cache, then move its live keys/values into the ring."""
        B, P = tokens.shape
        cached = CachedDecoder(self.model, B)
        logits = cached.prefill(tokens)
        cache = cached.cache
        L = cache.length  # live positions P - L .. P - 1, oldest first
        positions = torch.arange(P - L, P, device=tokens.device)
        slots = positions % self.W
        for kbuf, vbuf, k, v in zip(self.keys, self.values, cache.keys, cache.values):
            kbuf[:, :, slots] = k[:, :, :L].to(kbuf.dtype)
            vbuf[:, :, slots] = v[:, :, :L].to(vbuf.dtype)
        self.slot_pos[slots] = positions
        self.t.fill_(P)
        return logits

    # ---- one token ----------------------------------------------------------------------------------

    def _step_impl(self) -> Tensor:
        """Feed ``self.tok`` at position ``self.t``; returns logits (B, V); advances t. Static shapes,
        no host sync: safe to capture in a CUDA graph."""
        c, m = self.config, self.model
        B, H, Dh = self.B, c.n_head, c.d_head
        t = self.t
        slot = torch.remainder(t, self.W).view(1)
        self.slot_pos.index_copy_(0, slot, t.view(1))
        dist = t - self.slot_pos  # (W,) distance of each slot's position to the query
        limit = torch.remainder(t, c.tgt_len) + c.mem_len
        if c.same_length and c.mem_len > 0:
            limit = limit.clamp(max=c.mem_len - 1)
        hidden = (dist < 0) | (dist > limit)  # (W,)
        neg = torch.zeros(self.W, device=t.device, dtype=torch.float32).masked_fill_(hidden, float("-inf"))
        h = m._embed(self.tok.view(B, 1))  # (B, 1, D)
        if not self.relative:
            h = h + self.abs_pos.index_select(0, torch.remainder(t, c.tgt_len).view(1))
        if self.relative:
            d_idx = dist.clamp(0, self.W - 1).view(1, 1, 1, self.W).expand(B, H, 1, self.W)
        scale = m.layers[0].attn.scale
        for i, layer in enumerate(m.layers):
            attn = layer.attn
            xin = layer.attn_norm(h) if layer.pre_norm else h
            qkv = attn.qkv(xin).view(B, 3, H, Dh)  # (B, 3, H, Dh)
            q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, H, Dh)
            # (casts are no-ops unless run under autocast with float32 buffers)
            self.keys[i].index_copy_(2, slot, k.unsqueeze(2).to(self.keys[i].dtype))  # (B, H, W, Dh)
            self.values[i].index_copy_(2, slot, v.unsqueeze(2).to(self.values[i].dtype))
            q = q.to(self.keys[i].dtype)
            if self.relative:
                qu = ((q + attn.u.to(q.dtype)) * scale).unsqueeze(2)  # (B, H, 1, Dh)
                qv = (q + attn.v.to(q.dtype)) * scale  # (B, H, Dh)
                # position scores against the W distances, one matmul per head over the batch
                by_dist = torch.matmul(qv.transpose(0, 1), self.rel[i].transpose(1, 2))  # (H, B, W)
                by_dist = by_dist.transpose(0, 1).unsqueeze(2)  # (B, H, 1, W)
                bias = by_dist.gather(-1, d_idx).float() + neg  # (B, H, 1, W), by slot
                o = F.scaled_dot_product_attention(qu, self.keys[i], self.values[i],
                                                   attn_mask=bias.to(qu.dtype), scale=1.0)
            else:
                o = F.scaled_dot_product_attention(q.unsqueeze(2), self.keys[i], self.values[i],
                                                   attn_mask=neg.to(q.dtype).view(1, 1, 1, -1))
            a = attn.out(o.reshape(B, 1, H * Dh))  # (B, 1, D)
            h = layer._finish(h, a)
        logits = m.out(m.final_norm(h))[:, 0]  # (B, V)
        self.t.add_(1)
        return logits

    def step(self, tok: Tensor) -> Tensor:
        self.tok.copy_(tok)
        if not self.use_graph:
            return self._step_impl()
        if self.graph is None:
            if self.eager_steps < 3:
                # CUDA graphs want a few eager runs (on a side stream) before capture; these are
                # real steps of the stream, so nothing is wasted or repeated
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    logits = self._step_impl()
                torch.cuda.current_stream().wait_stream(side)
                self.eager_steps += 1
                return logits
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self._step_impl()  # recorded, not run
        self.graph.replay()
        return self.logits


def make_decoder(model: nn.Module, batch_size: int, kind: str = "cached", cuda_graph: bool | None = None):
    """``kind``: "cached" (model.step), "static" (ring buffers; CUDA graphs on CUDA) or "reference"."""
    if kind == "cached":
        return CachedDecoder(model, batch_size)
    if kind == "static":
        return StaticDecoder(model, batch_size, cuda_graph)
    if kind == "reference":
        return ReferenceDecoder(model, batch_size)
    raise ValueError(f"decoder kind must be cached, static or reference, got {kind!r}")
