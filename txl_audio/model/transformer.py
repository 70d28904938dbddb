"""Transformer-XL (Dai et al. 2019, section 3): segment-level recurrence memory and relative
positional attention, for whole segments (training, evaluation) and one token at a time (decoding).

Shape letters: B = batch, T = segment length (queries), M = memory positions, K = M + T keys,
D = d_model, H = heads, Dh = head size, V = vocabulary, W = mem_len + tgt_len decoding slots.

Who owns the past (see :mod:`txl_audio.model.memory`): the model holds weights only. ``forward``
reads a :class:`Memory` (per layer: its input at the last M positions, section 3.2) and returns the
next one in ``out.mems``; the caller keeps it from one segment to the next. ``init_cache`` makes a
:class:`DecodingCache` and ``step`` updates it in place; the decoder that made it keeps it.

How much context a call reads (``Lengths``: mem_len, tgt_len, clamp_len, same_length) is a value
passed to ``forward`` (``lengths=``) or fixed in a cache by ``init_cache``; ``config.lengths()`` gives
the trained values, ``config.lengths(mem_len=...)`` others. The config itself never changes.

Decoding sees exactly the context that segment-by-segment evaluation sees. The stream is cut into
segments of ``tgt_len`` tokens from its first token; a token attends to its own segment's earlier
tokens plus the ``mem_len`` positions before the segment, so at most W = mem_len + tgt_len positions:
the cache is a ring of W slots, and position p lives in slot p mod W. Keys and values of a position
are computed once, from its layer input, which is what the memory would re-project. Hence:

    logits of step() fed the stream in any chunks == forward() segment by segment with memory,

exactly (up to float rounding); with relative positions a key's position is its distance to the
query, so nothing needs re-encoding when the window slides. Decoding by *feeding memories back*
(forward one token with the per-layer hidden states of the same context as memory) is the same
computation done the slow way: it re-projects the whole context for every token.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from txl_audio.config import Lengths, ModelConfig
from txl_audio.data import IGNORE_INDEX
from txl_audio.model.attention import (
    MultiHeadAttention,
    attention_mask,
    compute_dtype,
    distance_columns,
    relative_distances,
    rotary_inv_freq,
    rotary_tables,
    sdpa_backends,
    sinusoid,
)
from txl_audio.model.heads import (
    HALF,
    LEVEL_SPAN,
    ByteEmbedding,
    DualSoftmaxHead,
    LinearPredictor,
    LogisticMixtureHead,
    PriorInputs,
    PriorState,
)
from txl_audio.model.memory import DecodingCache, LayerMemory, Memory, update_memory
from txl_audio.model.sampling import Predicted
from txl_audio.model.softmax import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax


@dataclass
class ModelOutput:
    # (B, T, V); None when forward(return_logits=False); log-probabilities with an adaptive softmax
    # or a 16-bit head
    logits: Tensor | None
    loss: Tensor | None  # (B, T) negative log-likelihood in nats; 0 where targets == IGNORE_INDEX
    mems: Memory  # the memory for the next segment: the last min(M + T, mem_len) positions
    predicted: Predicted | None = None  # the head's parameters per position (with the logits)
    aux_loss: Tensor | None = None  # (B, T) the linear-prediction prior's own loss (training adds it)


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
        self.attn = MultiHeadAttention(c.d_model, c.n_head, c.d_head, c.dropatt, c.attention)
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
        self, x: Tensor, past: LayerMemory | None, rel_k: Tensor | None, mask: Tensor | None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D); past: this layer's memory (M positions) or None; rel_k (H, K+1, Dh) or None;
        mask (B|1, 1, T, K) or None; rope: rotary cos, sin (K, r/2) or None -> output (B, T, D), keys
        and values (B, H, K, Dh) of all K positions. The memory's keys and values are used when it
        carries them, else re-projected."""
        mem = None if past is None or past.hidden.shape[1] == 0 else past.hidden
        mem_kv = (past.keys, past.values) if mem is not None and past.has_kv else None
        if self.pre_norm:
            x_in = self.attn_norm(x)
            # the memory is normalized too: it is the same layer input, only from earlier positions
            # (not needed when its keys and values come along)
            mem = None if mem is None else (mem if mem_kv is not None else self.attn_norm(mem))
        else:
            x_in = x
        a, k, v = self.attn(x_in, mem, rel_k, mask, mem_kv, rope)
        return self._finish(x, a), k, v

    def step(self, x: Tensor, ring: LayerMemory, slots: Tensor, rel_k: Tensor | None, dist: Tensor,
             mask: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Decode x (B, n, D) over this layer's ring of keys and values (see MultiHeadAttention.step)."""
        x_in = self.attn_norm(x) if self.pre_norm else x
        return self._finish(x, self.attn.step(x_in, ring, slots, rel_k, dist, mask, rope))


class TransformerXL(nn.Module):
    """Transformer-XL language model. See the module docstring for memory and cache semantics.

    ``TransformerXL(config: ModelConfig)`` builds the weights only (no state between calls).
    ``model(tokens (B, T), mems=None, targets=None, doc_pos=None, lengths=...)`` returns a
    :class:`ModelOutput`: ``logits`` (B, T, V), ``loss`` (B, T) NLL in nats where targets are given, and
    ``mems``, the memory to pass with the next segment. ``model.init_cache(B)`` and
    ``model.step(tokens, cache)`` decode one token at a time (see :mod:`txl_audio.decoders`).

    ``attention="absolute"`` is the vanilla Transformer baseline: sinusoidal absolute positions added
    to the input (restarting at 0 in every segment) and no memory (mem_len = 0, enforced by
    ModelConfig). ``attention="rotary"`` keeps the memory and replaces the relative position terms by
    rotary positions on queries and keys (model/attention.py).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.d_model % 2:
            raise ValueError(f"model.d_model must be even (sinusoid embeddings), got {config.d_model}")
        self.config = config
        self.relative = config.attention == "relative"
        self.rotary = config.attention == "rotary"
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
        # the linear-prediction prior of the 16-bit heads (model/heads.py)
        fitted = c.lp_coefficients == "fitted"
        self.lp = LinearPredictor(c.d_model, c.lp_order, fitted) if c.lp_order else None
        if c.head != "softmax":
            # 16-bit audio: both bytes of a sample embedded, a factored output distribution
            self.word_emb = ByteEmbedding(c.d_model)
            self.emb_scale = math.sqrt(c.d_model)
            if c.head == "dual_softmax":
                self.out = DualSoftmaxHead(c.d_model)
            else:
                self.out = LogisticMixtureHead(c.d_model, c.mixture_components)
            self.head = self.out
            return
        self.head = None  # a softmax: the model computes its logits itself
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
        self, hidden: Tensor, targets: Tensor | None, return_logits: bool = True,
        prior_inputs: PriorInputs | None = None, build_logits: bool = True,
    ) -> tuple[Tensor | None, Tensor | None, Predicted | None, Tensor | None]:
        """hidden (B, T, D) -> logits (B, T, V) (or None), per-token NLL (B, T) (or None), the
        prediction (the head's parameters; None when return_logits is False) and the prior's auxiliary
        loss (B, T) (or None). ``prior_inputs``: LinearPredictor.context's for these positions. With
        adaptive softmax the
        logits are the full log-probabilities, and the loss is computed without them (tail clusters
        only for the tokens whose target lies there); with a 16-bit head they are the log-probabilities
        of the 65,536 levels, built only when asked for (``build_logits=False``: the prediction alone,
        as decoding wants it)."""
        if self.head is not None:
            return self._head_output(hidden, targets, return_logits, prior_inputs, build_logits)
        logits, loss = self._softmax_output(hidden, targets, return_logits)
        return logits, loss, (Predicted(None, (logits,)) if logits is not None else None), None

    def _head_output(
        self, hidden: Tensor, targets: Tensor | None, return_logits: bool,
        prior_inputs: PriorInputs | None, build_logits: bool,
    ) -> tuple[Tensor | None, Tensor | None, Predicted | None, Tensor | None]:
        B, T = hidden.shape[:2]
        flat = hidden.flatten(0, 1)  # (N, D)
        pred = log_b = prior = level = None
        if self.lp is not None:
            pi = prior_inputs
            level = None if pi.level is None else pi.level.flatten()
            base = None if pi.base is None else pi.base.flatten(0, 1)
            pred, log_b = self.lp(flat, pi.windows.flatten(0, 1), base, level)
            # the dual softmax models the residual against the rounded prediction; the mixture is
            # centred on the prediction itself
            prior = torch.round(pred * HALF).long() if self.config.head == "dual_softmax" else pred
        params = self.out.params(flat, prior, level)
        loss = aux = None
        if targets is not None:
            t = targets.flatten()
            valid = t != IGNORE_INDEX
            tc = t.clamp(min=0)
            loss = torch.where(valid, -self.out.log_prob(params, tc), 0.0).view(B, T)
            if pred is not None:
                aux = torch.where(valid, LinearPredictor.laplace_nll(pred, log_b, tc), 0.0).view(B, T)
        if not return_logits:
            return None, loss, None, aux
        predicted = Predicted(self.head, tuple(p.view(B, T, *p.shape[1:]) for p in params))
        return (predicted.logits if build_logits else None), loss, predicted, aux

    def _softmax_output(
        self, hidden: Tensor, targets: Tensor | None, return_logits: bool = True
    ) -> tuple[Tensor | None, Tensor | None]:
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
        """Weights N(0, init_std) (as the authors' code), biases 0, LayerNorm 1/0; the linear-prediction
        prior then starts as "the next sample equals this one"."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if "norm" in name:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, std)
        if self.lp is not None:
            self.lp.reset_parameters()
        if isinstance(self.out, LogisticMixtureHead):
            self.out.reset_parameters()
            if self.lp is not None and self.lp.fitted:  # scales relative to the prior's residual level
                self.out.centre_scales()

    # ---- masks and positions ------------------------------------------------------------------------

    @staticmethod
    def _query_limit(doc_pos: Tensor | None, lengths: Lengths) -> Tensor | int | None:
        """Largest key distance each query may attend (see attention_mask): the document position,
        and with same_length at most mem_len - 1 (a window of mem_len keys, itself included; no effect
        when mem_len = 0). doc_pos and same_length combine by taking the smaller."""
        limit: Tensor | int | None = doc_pos
        if lengths.same_length and lengths.mem_len > 0:
            m = lengths.mem_len - 1
            limit = m if doc_pos is None else doc_pos.clamp(max=m)
        return limit

    def _rel_pos(self, distances: Tensor, dtype: torch.dtype) -> Tensor:
        """(R, D) sinusoids of the given (already clamped) relative distances (R,)."""
        return sinusoid(distances, self.config.d_model).to(dtype)

    def _abs_pos(self, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(n, D) absolute sinusoid positions 0 .. n - 1 (absolute attention only; they restart at 0 in
        every segment)."""
        return sinusoid(torch.arange(n, device=device), self.config.d_model).to(dtype)

    # ---- training / evaluation ------------------------------------------------------------------------

    def forward(
        self,
        tokens: Tensor,
        mems: Memory | None = None,
        targets: Tensor | None = None,
        doc_pos: Tensor | None = None,
        *,
        lengths: Lengths | None = None,
        return_logits: bool = True,
        keep_kv: bool = False,
    ) -> ModelOutput:
        """tokens (B, T) int64; mems: the previous segment's ``out.mems`` (or None); targets (B, T)
        int64 with IGNORE_INDEX where there is nothing to predict; doc_pos (B, T) int64 position of
        each token in its file (a token attends only itself and the doc_pos tokens before it).

        ``lengths``: mem_len (how many positions the returned memory keeps, and same_length's
        window), clamp_len and same_length for this call (default: the trained ones,
        ``config.lengths()``), e.g. a longer memory at evaluation than in training.
        ``return_logits=False`` leaves ``out.logits`` None when only the loss is wanted.
        ``keep_kv=True`` (inference only) returns the memory with each layer's keys and values, so the
        next call does not re-project them: pass such a memory back only to the same, unchanged
        weights."""
        L = self.config.lengths() if lengths is None else lengths
        B, T = tokens.shape
        M = 0 if mems is None else mems.length
        if mems is not None and len(mems.layers) != self.config.n_layer:
            raise ValueError(f"the memory holds {len(mems.layers)} layers, the model {self.config.n_layer}")
        if M and self.config.attention == "absolute":
            raise ValueError("absolute attention has no memory: call forward with mems=None")
        if keep_kv and torch.is_grad_enabled():
            raise ValueError("keep_kv=True is for inference (torch.no_grad / inference_mode): in training "
                             "the memory's keys and values are re-projected with the current weights")
        K = M + T
        dev = tokens.device
        h = self._embed(tokens)  # (B, T, D)
        if self.config.attention == "absolute":
            h = h + self._abs_pos(T, dev, h.dtype)
        h = self.drop(h)

        limit = self._query_limit(doc_pos, L)
        mask = rope = None
        if self.rotary:
            # a boolean mask only where something besides causality limits a query (file starts,
            # same_length): causality alone runs in the kernels that take no mask (see _plain_attention)
            if limit is not None:
                mask = attention_mask(T, K, limit, dev, dtype=torch.bool)
            # keys carried in the memory keep the frame they were rotated in; otherwise a fresh one
            frame = mems.offset if M and mems.layers[0].has_kv else 0
            rope = rotary_tables(frame + torch.arange(K, device=dev), self._inv_freq(dev), compute_dtype(h))
        elif limit is not None or self.relative:
            mask = attention_mask(T, K, limit, dev, dtype=compute_dtype(h))
        rel_k = None
        if self.relative:
            d = relative_distances(K, L.clamp_len, dev, distance_columns(K, dev))
            pos_emb = self.drop(self._rel_pos(d, h.dtype))  # (P, D), P >= K+1 distances

        new = []
        with sdpa_backends(dev) if self.relative else nullcontext():
            for i, layer in enumerate(self.layers):
                past = mems.layers[i] if M else None
                if self.relative:
                    rel_k = layer.attn.rel_keys(pos_emb)  # (H, P, Dh)
                out, k, v = layer(h, past, rel_k, mask, rope)
                new.append(update_memory(past, h, k if keep_kv else None, v if keep_kv else None, L.mem_len))
                h = out
        prior_inputs, prior = None, None
        if self.lp is not None:  # the prior looks back no further than the file, and the tokens held
            prior_inputs, prior = self.lp.context(tokens, None if mems is None else mems.prior, doc_pos)
        logits, loss, predicted, aux = self._output(self.drop(self.final_norm(h)), targets, return_logits,
                                                    prior_inputs)
        offset = (frame if self.rotary else 0) + K - new[0].hidden.shape[1]
        return ModelOutput(logits, loss, Memory(tuple(new), prior, offset), predicted, aux)

    def _inv_freq(self, device: torch.device) -> Tensor:
        """The rotary frequencies (r/2,) float64 (made per call: a float64 buffer would follow a
        model.to(bfloat16))."""
        c = self.config
        return rotary_inv_freq(c.rotary_dims, c.rotary_base, device)

    # ---- cached decoding -------------------------------------------------------------------------------

    def init_cache(self, batch_size: int, lengths: Lengths | None = None,
                   dtype: torch.dtype | None = None) -> DecodingCache:
        """An empty decoding cache for ``batch_size`` streams on the model's device (and dtype by
        default), for these weights and ``lengths`` (default: the trained ones): make a new one after
        changing either."""
        L = self.config.lengths() if lengths is None else lengths
        c = self.config
        p = next(self.parameters())  # device and dtype (word_emb has no single .weight when adaptive)
        dtype = dtype or p.dtype
        W = L.mem_len + L.tgt_len
        shape = (batch_size, c.n_head, W, c.d_head)
        layers = tuple(LayerMemory(None, torch.zeros(shape, device=p.device, dtype=dtype),
                                   torch.zeros(shape, device=p.device, dtype=dtype)) for _ in self.layers)
        rel = abs_pos = inv_freq = None
        with torch.no_grad():
            if self.rotary:
                inv_freq = self._inv_freq(p.device)
            elif self.relative:
                d = torch.arange(W, device=p.device)  # distances 0 .. W-1
                if L.clamp_len >= 0:
                    d = d.clamp(max=L.clamp_len)
                pos = self._rel_pos(d, p.dtype)  # (W, D)
                rel = tuple(layer.attn.rel_keys(pos).to(dtype).contiguous() for layer in self.layers)
            else:
                abs_pos = self._abs_pos(L.tgt_len, p.device, dtype)  # (tgt_len, D)
        prior = None
        if self.lp is not None:  # the prior's last tokens (masked until they exist) and coefficients
            fitted = self.lp.fitted
            z = lambda *shape, dt=torch.float64: torch.zeros(*shape, dtype=dt, device=p.device)  # noqa: E731
            prior = PriorState(
                z(batch_size, self.lp.keep, dt=torch.long),
                z(batch_size, self.lp.order) if fitted else None,
                z(batch_size, dt=torch.long),
                z(batch_size, LEVEL_SPAN) if fitted else None,
                z(batch_size) if fitted else None,
            )
        return DecodingCache(
            lengths=L,
            layers=layers,
            slot_pos=torch.full((W,), -(2**40), dtype=torch.long, device=p.device),
            t=torch.zeros((), dtype=torch.long, device=p.device),
            rel_keys=rel,
            abs_pos=abs_pos,
            prior=prior,
            inv_freq=inv_freq,
        )

    @torch.no_grad()
    def step(self, tokens: Tensor, cache: DecodingCache) -> Predicted:
        """Feed ``tokens (B, n)`` (any n, n >= 1) after everything the cache has seen; returns the
        prediction for each (``.logits`` (B, n, V): logits, or log-probabilities with an adaptive
        softmax or a 16-bit head; ``.sample()``) and updates the cache in place. Call in eval mode. A
        chunk is cut at segment boundaries; one token (n = 1) runs with no host synchronisation and the
        same shapes every time, so it can be captured in a CUDA graph."""
        n = tokens.shape[1]
        if n == 0:
            raise ValueError("model.step needs at least one token")
        T = cache.lengths.tgt_len
        pieces, s = [], 0
        while s < n:
            e = min(n, s + T - (cache.position % T))  # never cross a segment boundary within a piece
            pieces.append(self._step_piece(tokens[:, s:e], cache))
            s = e
        if len(pieces) == 1:
            return pieces[0]
        params = tuple(torch.cat(ps, dim=1) for ps in zip(*(p.params for p in pieces)))
        return Predicted(pieces[0].head, params)

    def _step_piece(self, tokens: Tensor, cache: DecodingCache) -> Predicted:
        """tokens (B, n) that all lie in one segment -> their prediction (B, n).

        A slot is visible to the query at position p iff it holds a position q with
        0 <= p - q <= limit(p), limit(p) = mem_len + (p mod tgt_len): the segment's earlier tokens and
        the memory before it (at most mem_len - 1 back with same_length). Writing the piece's keys
        overwrites positions p - W, which no query of the piece can see."""
        L = cache.lengths
        n = tokens.shape[1]
        W = cache.slots
        pos = cache.t + torch.arange(n, device=cache.t.device)  # (n,) stream positions
        slots = torch.remainder(pos, W)
        cache.slot_pos.index_copy_(0, slots, pos)
        dist = pos[:, None] - cache.slot_pos[None, :]  # (n, W)
        limit = torch.remainder(pos, L.tgt_len) + L.mem_len
        if L.same_length and L.mem_len > 0:
            limit = limit.clamp(max=L.mem_len - 1)
        hidden = (dist < 0) | (dist > limit[:, None])
        h = self._embed(tokens)  # (B, n, D)
        if cache.abs_pos is not None:
            h = h + cache.abs_pos.index_select(0, torch.remainder(pos, L.tgt_len)).to(h.dtype)
        h = self.drop(h)
        dtype = cache.layers[0].keys.dtype
        mask = torch.zeros((n, W), device=h.device, dtype=dtype).masked_fill_(hidden, float("-inf"))
        dist = dist.clamp(0, W - 1)
        rope = None if cache.inv_freq is None else rotary_tables(pos, cache.inv_freq, dtype)
        with sdpa_backends(h.device):
            for i, (layer, ring) in enumerate(zip(self.layers, cache.layers)):
                rel_k = cache.rel_keys[i] if cache.rel_keys is not None else None
                h = layer.step(h, ring, slots, rel_k, dist, mask, rope)
        prior_inputs = None
        if cache.prior is not None:  # the prior looks back as far as the stream goes
            capturing = h.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
            prior_inputs, new = self.lp.context(tokens, cache.prior, pos[None, :].expand(tokens.shape[0], n),
                                                dense=capturing)
            cache.prior.history.copy_(new.history)  # in place: the buffers a CUDA graph captured
            if new.coef is not None:
                cache.prior.coef.copy_(new.coef)
                cache.prior.resid.copy_(new.resid)
                cache.prior.pending.copy_(new.pending)
        cache.t.add_(n)
        cache.position += n
        _, _, predicted, _ = self._output(self.drop(self.final_norm(h)), None, True, prior_inputs,
                                          build_logits=False)
        return predicted


@contextmanager
def compiled_layers(model: TransformerXL, enabled: bool = True):
    """``torch.compile`` each decoder layer of ``model`` for the duration of the block, then put the
    plain layers back.

    For inference: compiling the layers fuses what runs per token (norms, residuals, the feed-forward,
    the position bias) while the memory bookkeeping between layers stays plain Python. All layers share
    one compiled graph (same code, parameters as inputs).
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
