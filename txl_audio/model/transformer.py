"""Transformer-XL (Dai et al. 2019, section 3): segment-level recurrence memory, relative positional
attention, and a key/value cache for decoding.

Shape letters: B = batch, T = segment length (queries), M = memory positions, K = M + T keys,
D = d_model, H = heads, Dh = head size, V = vocabulary, L = live positions in a decoding cache.

Memory (section 3.2): ``out.mems[l]`` holds the input of layer l (``mems[n_layer]`` the last layer's
output) for the last ``mem_len`` positions, detached: the next segment attends to it with no gradient
flowing back. ``mems`` is an explicit tuple passed in and returned; the model keeps no state.

Key/value cache (``init_cache`` / ``step``): decoding sees exactly the context that segment-by-segment
evaluation sees. The stream is cut into segments of ``tgt_len`` tokens from its first token; a token
attends to its own segment's earlier tokens plus the ``mem_len`` positions before the segment (the
memory), so the cache holds at most ``mem_len + tgt_len`` positions and is cut back to the last
``mem_len`` at each segment boundary (the sliding window moves by one segment). Keys and values of a
position are computed once, from its layer input, which is what the memory would re-project. Hence:

    logits of step() fed the stream in any chunks == forward() segment by segment with memory,

exactly (up to float rounding); with relative positions a key's position is its distance to the
query, so nothing needs re-encoding when the window slides. Decoding by *feeding memories back*
(forward one token with the per-layer hidden states of the same context as ``mems``) is the same
computation done the slow way: it re-projects the whole context for every token.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from txl_audio.config import ModelConfig
from txl_audio.model.attention import (
    MultiHeadAttention,
    attention_mask,
    relative_distances,
    sinusoid,
)
from txl_audio.model.softmax import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax

IGNORE_INDEX = -100  # targets with this value get loss 0 (next token in another file, or none)


@dataclass
class ModelOutput:
    logits: Tensor | None  # (B, T, V); None when forward(return_logits=False)
    loss: Tensor | None  # (B, T) negative log-likelihood in nats; 0 where targets == IGNORE_INDEX
    mems: tuple[Tensor, ...]  # n_layer + 1 tensors (B, min(M + T, mem_len), D), detached


class Memory(tuple):
    """``out.mems`` from a forward without gradients: the tuple of per-layer hidden states (the
    contract; any tuple of tensors may be passed back instead), plus ``kv``: per layer (B, M, 2, H, Dh)
    keys and values of the same positions, and ``stamp``: which weights made them. The next forward
    uses ``kv`` instead of re-projecting the memory when the stamp still matches (same result, a
    tenth less work in evaluation); slicing or rebuilding the tuple simply drops it."""

    kv: tuple[Tensor, ...]
    stamp: tuple

    def __new__(cls, hidden: tuple[Tensor, ...], kv: tuple[Tensor, ...], stamp: tuple) -> Memory:
        self = super().__new__(cls, hidden)
        self.kv, self.stamp = kv, stamp
        return self


@dataclass
class KVCache:
    """Per-layer keys and values of the positions a decoding step may attend to.

    ``keys[l]``, ``values[l]``: (B, H, mem_len + tgt_len, Dh) buffers whose first ``length``
    positions are live, oldest first. ``pos``: tokens consumed so far (stream position of the next
    token). ``rel_keys[l]``: (H, mem_len + tgt_len + 1, Dh) relative keys R W_kR for the distances
    mem_len + tgt_len - 1 .. -1, computed once by ``init_cache`` (so re-create the cache after changing
    the weights). ``step`` updates the buffers in place and returns the cache; ``clone()`` forks one.
    """

    keys: list[Tensor]
    values: list[Tensor]
    rel_keys: list[Tensor] | None
    length: int = 0
    pos: int = 0

    def clone(self) -> KVCache:
        return KVCache(
            [k.clone() for k in self.keys],
            [v.clone() for v in self.values],
            self.rel_keys,
            self.length,
            self.pos,
        )

    def trim(self, keep: int) -> None:
        """Keep only the last ``keep`` live positions (moved to the front of the buffers)."""
        if self.length <= keep:
            return
        lo, hi = self.length - keep, self.length
        for buf in (*self.keys, *self.values):
            buf[:, :, :keep] = buf[:, :, lo:hi].clone()  # clone: the ranges overlap when keep > lo
        self.length = keep


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_inner: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner)
        self.fc2 = nn.Linear(d_inner, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.relu(self.fc1(x), inplace=True))))


class DecoderLayer(nn.Module):
    """Attention + position-wise feed-forward, each with residual and LayerNorm (after the residual
    as in the paper, or before the sublayer with ``pre_norm``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.pre_norm = c.pre_norm
        self.attn = MultiHeadAttention(c.d_model, c.n_head, c.d_head, c.dropatt, c.attention == "relative")
        self.attn_norm = nn.LayerNorm(c.d_model)
        self.ff = FeedForward(c.d_model, c.d_inner, c.dropout)
        self.ff_norm = nn.LayerNorm(c.d_model)
        self.drop = nn.Dropout(c.dropout)

    def _finish(self, x: Tensor, a: Tensor) -> Tensor:
        """Residual + norm around the attention output ``a``, then the feed-forward block."""
        if self.pre_norm:
            x = x + self.drop(a)
            return x + self.ff(self.ff_norm(x))
        x = self.attn_norm(x + self.drop(a))
        return self.ff_norm(x + self.ff(x))

    def forward(
        self,
        x: Tensor,
        mem: Tensor | None,
        rel_k: Tensor | None,
        mask: Tensor | None,
        mem_kv: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x (B, T, D), mem (B, M, D) or None, rel_k (H, K+1, Dh) or None, mask (B|1, 1, T, K),
        mem_kv (B, M, 2, H, Dh) or None -> output (B, T, D), keys/values (B, K, 2, H, Dh)."""
        if self.pre_norm:
            # the memory is normalized too: it is the same layer input, only from earlier positions
            mem_in = None if mem is None else self.attn_norm(mem)
            a, kv = self.attn(self.attn_norm(x), mem_in, rel_k, mask, mem_kv)
        else:
            a, kv = self.attn(x, mem, rel_k, mask, mem_kv)
        return self._finish(x, a), kv

    def step(
        self, x: Tensor, kbuf: Tensor, vbuf: Tensor, start: int, rel_k: Tensor | None, mask: Tensor | None
    ) -> Tensor:
        """Decode x (B, n, D): write its keys/values at ``start`` of kbuf/vbuf (B, H, C, Dh) and attend
        to the live positions [0, start + n)."""
        xin = self.attn_norm(x) if self.pre_norm else x
        q, kv = self.attn.project(xin, None)  # (B, n, H, Dh), (B, n, 2, H, Dh)
        end = start + x.shape[1]
        kbuf[:, :, start:end] = kv[:, :, 0].transpose(1, 2)
        vbuf[:, :, start:end] = kv[:, :, 1].transpose(1, 2)
        kk = kbuf[:, :, :end].transpose(1, 2)  # (B, L, H, Dh), a view
        vv = vbuf[:, :, :end].transpose(1, 2)
        a = self.attn.out(self.attn.attend(q, kk, vv, rel_k, mask))
        return self._finish(x, a)


class TransformerXL(nn.Module):
    """Transformer-XL language model. See the module docstring for memory and cache semantics.

    ``attention="absolute"`` is the vanilla Transformer baseline: sinusoidal absolute positions added
    to the input (restarting at 0 in every segment) and no memory (mem_len = 0, enforced by
    ModelConfig).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.d_model % 2:
            raise ValueError(f"model.d_model must be even (sinusoid embeddings), got {config.d_model}")
        self.config = config
        self.relative = config.attention == "relative"
        self._build_io()
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layer))
        # pre-norm leaves the residual stream unnormalized: one LayerNorm before the output
        self.final_norm = nn.LayerNorm(config.d_model) if config.pre_norm else nn.Identity()
        self.reset_parameters()

    # ---- input embedding and output layer: the only places that know the vocabulary ------------------

    def _build_io(self) -> None:
        c = self.config
        self.adaptive = bool(c.cutoffs)
        if self.adaptive:
            # word vocabularies: adaptive input (Baevski & Auli 2019) and adaptive softmax (Grave et al.
            # 2017) over frequency-sorted clusters, word vectors and projections tied as in the paper
            self.word_emb = AdaptiveEmbedding(c.vocab_size, c.d_model, c.d_model, c.cutoffs, c.div_val)
            self.emb_scale = 1.0  # AdaptiveEmbedding scales by sqrt(D) itself
            self.out = ProjectedAdaptiveLogSoftmax(
                c.vocab_size,
                c.d_model,
                c.d_model,
                c.cutoffs,
                c.div_val,
                embedding=self.word_emb,
                tie_weights=c.tie_weights,
                tie_projs=c.tie_weights,
            )
            return
        self.word_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.emb_scale = math.sqrt(c.d_model)  # as the authors' code: embeddings scaled by sqrt(D)
        self.out = nn.Linear(c.d_model, c.vocab_size)
        if c.tie_weights:
            self.out.weight = self.word_emb.weight

    def _embed(self, tokens: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, D) scaled embeddings (no position, no dropout)."""
        return self.word_emb(tokens) * self.emb_scale

    def _output(
        self, hidden: Tensor, targets: Tensor | None, return_logits: bool = True
    ) -> tuple[Tensor | None, Tensor | None]:
        """hidden (B, T, D) -> logits (B, T, V) (or None), per-token NLL (B, T) (or None).
        With adaptive softmax the logits are the full log-probabilities, and the loss is computed
        without them (tail clusters only for the tokens whose target lies there)."""
        if self.adaptive:
            flat = hidden.flatten(0, 1)  # (B*T, D)
            loss = None if targets is None else self.out.nll(flat, targets.flatten()).view(targets.shape)
            logits = self.out.log_prob(flat).view(*hidden.shape[:2], -1) if return_logits else None
            return logits, loss
        logits = self.out(hidden)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
            ).view(targets.shape)
        return (logits if return_logits else None), loss

    # ---- initialisation ---------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """Weights N(0, init_std) (as the authors' code), biases 0, LayerNorm 1/0."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if "norm" in name:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, std)

    # ---- masks and positions ------------------------------------------------------------------------

    def _query_limit(self, doc_pos: Tensor | None, mem_len: int) -> Tensor | int | None:
        """Largest key distance each query may attend (see attention_mask): the document position,
        and with same_length at most mem_len - 1 (a window of mem_len keys, itself included; no effect
        when mem_len = 0). doc_pos and same_length combine by taking the smaller."""
        limit: Tensor | int | None = doc_pos
        if self.config.same_length and mem_len > 0:
            limit = mem_len - 1 if doc_pos is None else doc_pos.clamp(max=mem_len - 1)
        return limit

    def _rel_pos(self, klen: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(K+1, D) sinusoids R of the distances K-1 .. -1 (clamped at clamp_len)."""
        d = relative_distances(klen, self.config.clamp_len, device)
        return sinusoid(d, self.config.d_model).to(dtype)

    def _abs_pos(self, start: int, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(n, D) absolute sinusoid positions start .. start + n - 1 (absolute attention only)."""
        return sinusoid(torch.arange(start, start + n, device=device), self.config.d_model).to(dtype)

    # ---- training / evaluation ------------------------------------------------------------------------

    def forward(
        self,
        tokens: Tensor,
        mems: tuple[Tensor, ...] | list[Tensor] | None = None,
        targets: Tensor | None = None,
        doc_pos: Tensor | None = None,
        *,
        return_logits: bool = True,
        mem_len: int | None = None,
    ) -> ModelOutput:
        """tokens (B, T) int64; mems from the previous segment's output (or None); targets (B, T)
        int64 with IGNORE_INDEX where there is nothing to predict; doc_pos (B, T) int64 position of
        each token in its file (a token attends only itself and the doc_pos tokens before it).
        ``return_logits=False`` leaves ``out.logits`` None when only the loss is wanted.
        ``mem_len`` overrides config.mem_len for the returned memory (and for same_length's window),
        e.g. to evaluate with a longer memory than training used."""
        c = self.config
        B, T = tokens.shape
        mem_len = c.mem_len if mem_len is None else mem_len
        if mems is not None and len(mems) != c.n_layer + 1:
            raise ValueError(f"mems must hold n_layer + 1 = {c.n_layer + 1} tensors, got {len(mems)}")
        M = 0 if mems is None else mems[0].shape[1]
        if M and not self.relative:
            raise ValueError("absolute attention has no memory: call forward with mems=None")
        K = M + T
        dev = tokens.device
        h = self._embed(tokens)  # (B, T, D)
        if not self.relative:
            h = h + self._abs_pos(0, T, dev, h.dtype)
        h = self.drop(h)

        limit = self._query_limit(doc_pos, mem_len)
        mask = None if (limit is None and not self.relative) else attention_mask(T, K, limit, dev)
        pos_emb = self.drop(self._rel_pos(K, dev, h.dtype)) if self.relative else None

        # inference reuses the memory's keys and values from the previous forward (see Memory)
        keep_kv = mem_len > 0 and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        stamp = self._stamp() if keep_kv else None
        mem_kv = (
            mems.kv if stamp is not None and M and isinstance(mems, Memory) and mems.stamp == stamp else None
        )
        hids, kvs = [h], []
        for i, layer in enumerate(self.layers):
            rel_k = layer.attn.rel_keys(pos_emb) if pos_emb is not None else None  # (H, K+1, Dh)
            h, kv = layer(h, mems[i] if M else None, rel_k, mask, None if mem_kv is None else mem_kv[i])
            hids.append(h)
            kvs.append(kv)
        new_mems = self._update_mems(hids, mems if M else None, mem_len)
        if stamp is not None:
            n = new_mems[0].shape[1]
            new_mems = Memory(new_mems, tuple(kv[:, kv.shape[1] - n :] for kv in kvs), stamp)

        logits, loss = self._output(self.drop(self.final_norm(h)), targets, return_logits)
        return ModelOutput(logits, loss, new_mems)

    def _stamp(self) -> tuple | None:
        """Identifies the weights that make keys and values: storage and in-place version of each
        layer's projection (and pre-norm LayerNorm) parameters, so an optimizer step, a
        load_state_dict or a move to another device invalidates a Memory's keys and values.
        None (no reuse) for weights made under inference_mode: they keep no version counter."""
        params = [p for layer in self.layers for p in (layer.attn.qkv.weight, *layer.attn_norm.parameters())]
        if any(p.is_inference() for p in params):
            return None
        return tuple((p.data_ptr(), p._version, p.dtype) for p in params)

    @staticmethod
    def _update_mems(hids: list[Tensor], mems: tuple[Tensor, ...] | None, mem_len: int) -> tuple[Tensor, ...]:
        """Last mem_len positions of [old memory; this segment] per layer input, detached."""
        T = hids[0].shape[1]
        out = []
        for i, h in enumerate(hids):
            h = h.detach()
            if mems is not None and mem_len > T:
                h = torch.cat([mems[i].detach(), h], dim=1)  # (B, M+T, D)
            out.append(h[:, h.shape[1] - min(mem_len, h.shape[1]) :])
        return tuple(out)

    # ---- cached decoding -------------------------------------------------------------------------------

    def init_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for ``batch_size`` streams, on the model's device (and dtype by default)."""
        c = self.config
        p = next(self.parameters())  # device and dtype (word_emb has no single .weight when adaptive)
        dtype = dtype or p.dtype
        cap = c.mem_len + c.tgt_len
        shape = (batch_size, c.n_head, cap, c.d_head)
        keys = [torch.zeros(shape, device=p.device, dtype=dtype) for _ in self.layers]
        values = [torch.zeros(shape, device=p.device, dtype=dtype) for _ in self.layers]
        rel = None
        if self.relative:
            with torch.no_grad():
                pos = self._rel_pos(cap, p.device, p.dtype)  # (cap+1, D)
                rel = [layer.attn.rel_keys(pos).to(dtype).contiguous() for layer in self.layers]
        return KVCache(keys, values, rel)

    @torch.no_grad()
    def step(self, tokens: Tensor, cache: KVCache) -> tuple[Tensor, KVCache]:
        """Feed ``tokens (B, n)`` (any n) after everything the cache has seen; returns their logits
        (B, n, V) and the updated cache (the same object, updated in place). Call in eval mode."""
        c = self.config
        n = tokens.shape[1]
        pieces = []
        s = 0
        while s < n:
            offset = cache.pos % c.tgt_len
            if offset == 0 and cache.pos > 0:
                cache.trim(c.mem_len)  # a segment boundary: the memory keeps the last mem_len
            e = min(n, s + c.tgt_len - offset)  # never cross a segment boundary within one piece
            pieces.append(self._step_piece(tokens[:, s:e], cache))
            s = e
        if not pieces:
            return next(self.parameters()).new_zeros(tokens.shape[0], 0, c.vocab_size), cache
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)), cache

    def _step_piece(self, tokens: Tensor, cache: KVCache) -> Tensor:
        """tokens (B, n) that all lie in one segment -> logits (B, n, V)."""
        c = self.config
        n = tokens.shape[1]
        start, L = cache.length, cache.length + n
        dev = tokens.device
        h = self._embed(tokens)  # (B, n, D)
        if not self.relative:  # mem_len = 0: the cache holds this segment only, start = offset in it
            h = h + self._abs_pos(start, n, dev, h.dtype)
        h = self.drop(h)
        limit = self._query_limit(None, c.mem_len)
        needs_mask = n > 1 or (limit is not None and L - 1 > limit)
        mask = attention_mask(n, L, limit, dev) if needs_mask else None
        cap = cache.keys[0].shape[2]
        for i, layer in enumerate(self.layers):
            rel_k = cache.rel_keys[i][:, cap - L :] if cache.rel_keys is not None else None  # (H, L+1, Dh)
            h = layer.step(h, cache.keys[i], cache.values[i], start, rel_k, mask)
        cache.length, cache.pos = L, cache.pos + n
        logits, _ = self._output(self.drop(self.final_norm(h)), None)
        return logits


@contextmanager
def compiled_layers(model: TransformerXL, enabled: bool = True):
    """``torch.compile`` each decoder layer of ``model`` for the duration of the block, then put the
    plain layers back.

    For inference: compiling the whole model would also trace the Python that reuses the memory's
    keys and values from one segment to the next (``Memory``), which steps aside under compilation;
    compiling the layers fuses what runs per token (norms, residuals, the feed-forward, the position
    bias) and keeps that reuse. All layers share one compiled graph (same code, parameters as inputs).
    """
    if not enabled:
        yield model
        return
    plain = list(model.layers)
    try:
        for i, layer in enumerate(plain):
            model.layers[i] = torch.compile(layer)
        yield model
    finally:
        for i, layer in enumerate(plain):
            model.layers[i] = layer
