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
from dataclasses import dataclass, replace

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
from txl_audio.model.cascade_prior import CascadePrior
from txl_audio.model.compressive import Compressor, reconstruction_loss
from txl_audio.model.heads import (
    HALF,
    ByteEmbedding,
    DualSoftmaxHead,
    LinearPredictor,
    LogisticMixtureHead,
    PriorInputs,
    PriorState,
)
from txl_audio.model.memory import DecodingCache, LayerMemory, Memory, update_memory
from txl_audio.model.prior import SCALE_UNIT
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
    # the compressive memory's attention-reconstruction loss (a scalar; conv compression, with gradients
    # only), which the training loss adds with weight cmem_loss_weight
    cmem_loss: Tensor | None = None


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
        rope: tuple[Tensor, Tensor] | None = None, cmem: Tensor | None = None,
        cmem_rope: tuple[Tensor, Tensor] | None = None, crel: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D); past: this layer's memory (M positions) or None; rel_k (H, K+1, Dh) or None;
        mask (B|1, 1, T, K) or None; rope: rotary cos, sin (K, r/2) or None -> output (B, T, D), keys
        and values (B, H, K, Dh) of all K positions. The memory's keys and values are used when it
        carries them, else re-projected. ``cmem`` (B, C, D): this layer's compressed memory (its
        inputs, compressed), attended before the memory (see MultiHeadAttention.forward)."""
        mem = None if past is None or past.hidden.shape[1] == 0 else past.hidden
        mem_kv = (past.keys, past.values) if mem is not None and past.has_kv else None
        if self.pre_norm:
            x_in = self.attn_norm(x)
            # the memory is normalized too: it is the same layer input, only from earlier positions
            # (not needed when its keys and values come along)
            mem = None if mem is None else (mem if mem_kv is not None else self.attn_norm(mem))
            cmem = None if cmem is None else self.attn_norm(cmem)
        else:
            x_in = x
        a, k, v = self.attn(x_in, mem, rel_k, mask, mem_kv, rope, cmem, cmem_rope, crel)
        return self._finish(x, a), k, v

    def step(self, x: Tensor, ring: LayerMemory, slots: Tensor, rel_k: Tensor | None, dist: Tensor,
             mask: Tensor, rope: tuple[Tensor, Tensor] | None = None,
             crel: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Decode x (B, n, D) over this layer's ring of keys and values (see MultiHeadAttention.step)."""
        x_in = self.attn_norm(x) if self.pre_norm else x
        return self._finish(x, self.attn.step(x_in, ring, slots, rel_k, dist, mask, rope, crel))


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
        # compressive memory: one compression per layer (model/compressive.py)
        self.compress = (nn.ModuleList(Compressor(config.d_model, config.cmem_ratio, config.cmem_fn)
                                       for _ in range(config.n_layer)) if config.cmem_len else None)
        self.reset_parameters()

    # ---- input embedding and output layer: the only places that know the vocabulary ------------------

    def _build_io(self) -> None:
        c = self.config
        self.adaptive = bool(c.cutoffs)
        # the linear-prediction prior of the 16-bit heads (model/heads.py)
        fitted = c.lp_coefficients == "fitted"
        self.cascade = c.lp_order > 0 and c.lp_coefficients == "cascade"
        if self.cascade:  # the predictor cascade (model/prior.py) and its features' projection
            self.lp = CascadePrior(c.d_model, c.cascade)
        else:
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
        dual = self.config.head == "dual_softmax"
        # a sampler's open loop on the corpus's fixed predictor: the dual softmax draws in units of the
        # anchored level (DualSoftmaxHead.sample; the mixture's unit is the level already)
        unit = None
        open_fixed = self.lp is not None and self.lp.open_loop and self.lp.long_term is not None
        if self.cascade:  # centred on the cascade's prediction, in units of its residual scale
            level = prior_inputs.level.flatten()
            p = prior_inputs.pred.flatten()
            prior = p if dual else p.double() / HALF
            if dual and open_fixed:
                unit = prior_inputs.scale.flatten().double() / SCALE_UNIT
        elif self.lp is not None:
            pi = prior_inputs
            level = None if pi.level is None else pi.level.flatten()
            base = None if pi.base is None else pi.base.flatten(0, 1)
            pred, log_b = self.lp(flat, pi.windows.flatten(0, 1), base, level)
            # the dual softmax models the residual against the rounded prediction; the mixture is
            # centred on the prediction itself
            prior = torch.round(pred * HALF).long() if dual else pred
            if dual and open_fixed and level is not None:  # level = log(mean + 1) - log 2^15
                unit = torch.exp(level.double()) * HALF - 1.0
        params = self.out.params(flat, prior, level, unit) if unit is not None else \
            self.out.params(flat, prior, level)
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
        if self.compress is not None:
            for comp in self.compress:
                comp.reset_parameters()
        if isinstance(self.out, LogisticMixtureHead):
            self.out.reset_parameters()
            if self.lp is not None and (self.lp.fitted or self.cascade):  # scales relative to its level
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
        start = 0 if mems is None else mems.offset  # stream position of the first memory position
        cm = mems.cmem if (mems is not None and mems.cmem is not None and L.cmem_len) else None
        cpos = mems.cmem_pos if cm is not None else ()
        if cm is not None and len(cpos) > L.cmem_len:  # a shorter compressed memory at evaluation
            cm, cpos = tuple(c[:, -L.cmem_len :] for c in cm), cpos[-L.cmem_len :]
        C = len(cpos)
        h = self._embed(tokens)  # (B, T, D)
        if self.config.attention == "absolute":
            h = h + self._abs_pos(T, dev, h.dtype)
        prior_inputs, prior = None, None
        if self.lp is not None:  # the prior looks back no further than the file, and the tokens held
            prior_inputs, prior = self.lp.context(tokens, None if mems is None else mems.prior, doc_pos)
            if self.cascade:  # the cascade's features are inputs
                h = h + self.lp.embed(prior_inputs).to(h.dtype)
        h = self.drop(h)

        limit = self._query_limit(doc_pos, L)
        mask = rope = cmem_rope = crel_pos = None
        cdtype = compute_dtype(h)
        if self.rotary:
            # a boolean mask only where something besides causality limits a query (file starts,
            # same_length): causality alone runs in the kernels that take no mask (see _plain_attention)
            if limit is not None:
                mask = attention_mask(T, K, limit, dev, dtype=torch.bool)
            # keys carried in the memory were rotated at their stream positions, and compressed slots
            # sit at theirs: then the frame is the stream's; otherwise positions count from the first
            # memory position (the same scores: rotary positions are relative)
            inv = self._inv_freq(dev)
            frame = start if (C or (M and mems.layers[0].has_kv)) else 0
            rope = rotary_tables(frame + torch.arange(K, device=dev), inv, cdtype)
            if C:
                cmem_rope = rotary_tables(self._centroids(cpos, dev), inv, cdtype)
        elif limit is not None or self.relative:
            mask = attention_mask(T, K, limit, dev, dtype=compute_dtype(h))
        if C and mask is not None:  # the compressed slots: hidden only behind a file start
            mask = torch.cat([self._cmem_mask(cpos, start + M, T, doc_pos, mask.dtype, dev).expand(
                mask.shape[0], 1, T, C), mask], dim=-1)
        rel_k = crel = None
        if self.relative:
            d = relative_distances(K, L.clamp_len, dev, distance_columns(K, dev))
            pos_emb = self.drop(self._rel_pos(d, h.dtype))  # (P, D), P >= K+1 distances
            if C:
                crel_pos, crel_idx = self._cmem_distances(cpos, start + M, T, L.clamp_len, dev)
                crel_emb = self.drop(self._rel_pos(crel_pos, h.dtype))

        new, leaving = [], []
        with sdpa_backends(dev) if self.relative else nullcontext():
            for i, layer in enumerate(self.layers):
                past = mems.layers[i] if M else None
                if self.relative:
                    rel_k = layer.attn.rel_keys(pos_emb)  # (H, P, Dh)
                    if C:
                        crel = (layer.attn.rel_keys(crel_emb), crel_idx)
                out, k, v = layer(h, past, rel_k, mask, rope, None if cm is None else cm[i], cmem_rope, crel)
                mem_i = update_memory(past, h, k if keep_kv else None, v if keep_kv else None, L.mem_len)
                new.append(mem_i)
                if self.compress is not None and L.cmem_len:  # the states that left the memory
                    n = K - mem_i.hidden.shape[1]  # the oldest n of [memory; segment]
                    old = h.detach()[:, : max(n - M, 0)]
                    if M:
                        old = torch.cat([past.hidden[:, :n], old], dim=1)
                    leaving.append((h, old))
                h = out
        logits, loss, predicted, aux = self._output(self.drop(self.final_norm(h)), targets, return_logits,
                                                    prior_inputs)
        offset = start + K - new[0].hidden.shape[1]
        memory = Memory(tuple(new), prior, offset)
        cmem_loss = None
        if leaving:
            memory, cmem_loss = self._compress_leaving(memory, cm, cpos, leaving, start, L.cmem_len)
        return ModelOutput(logits, loss, memory, predicted, aux, cmem_loss)

    # ---- compressive memory ----------------------------------------------------------------------------

    def _centroids(self, cpos: tuple[int, ...] | Tensor, device: torch.device) -> Tensor:
        """Stream positions of compressed slots (float64): the centroid of the positions each summarises."""
        p = torch.as_tensor(cpos, dtype=torch.float64, device=device)
        return p + (self.config.cmem_ratio - 1) / 2

    @staticmethod
    def _cmem_mask(cpos: tuple[int, ...], q0: int, T: int, doc_pos: Tensor | None, dtype: torch.dtype,
                   device: torch.device) -> Tensor:
        """(B|1, 1, T, C) mask of the compressed slots for queries at stream positions q0 .. q0+T-1: a
        slot is hidden from a query iff the first position it summarises lies before the query's file
        (same_length does not apply to them: they are the reach beyond the memory)."""
        C = len(cpos)
        if doc_pos is None:
            hidden = torch.zeros(1, 1, T, C, dtype=torch.bool, device=device)
        else:
            back = (q0 + torch.arange(T, device=device))[:, None] - torch.as_tensor(cpos, device=device)[None]
            hidden = (back[None] > doc_pos[:, :, None])[:, None]  # (B, 1, T, C)
        if dtype == torch.bool:
            return ~hidden
        return torch.zeros((), dtype=dtype, device=device).masked_fill(hidden, float("-inf"))

    def _cmem_distances(self, cpos: tuple[int, ...], q0: int, T: int, clamp_len: int,
                        device: torch.device) -> tuple[Tensor, Tensor]:
        """Relative attention over compressed slots: a table of N = T + (last - first slot position)
        distances (float, from the nearest query-slot pair up) and the index (T, C) of each query-slot
        distance in it, so one product per head gives every position score."""
        first, last = cpos[0], cpos[-1]
        n = T + last - first
        nearest = q0 - last - (self.config.cmem_ratio - 1) / 2
        d = nearest + torch.arange(n, device=device, dtype=torch.float64)
        if clamp_len >= 0:
            d = d.clamp(max=clamp_len)
        idx = torch.arange(T, device=device)[:, None] + (last - torch.as_tensor(cpos, device=device))[None]
        return d, idx

    def compress_states(self, layer: int, states: Tensor) -> Tensor:
        """A layer's inputs at whole groups of cmem_ratio positions (B, n*c, D) -> their compressed
        slots (B, n, D), without gradient (the compressed memory carries none)."""
        with torch.no_grad():
            return self.compress[layer](states)

    def forget(self, mems: Memory, lengths: Lengths | None = None) -> Memory:
        """``mems`` cut to its last mem_len positions, as a segment boundary cuts the memory; a
        compressive model compresses the positions cut into its compressed memory as its forward pass
        does (whole groups of cmem_ratio, aligned on the stream; the oldest remainder dropped). The
        reference decoder calls this at every boundary."""
        L = self.config.lengths() if lengths is None else lengths
        n_drop = mems.length - L.mem_len
        kept = mems.last(L.mem_len)
        if self.compress is None or not L.cmem_len or n_drop <= 0:
            return kept
        cm, cpos = mems.cmem, mems.cmem_pos
        if cm is not None and len(cpos) > L.cmem_len:
            cm, cpos = tuple(c[:, -L.cmem_len :] for c in cm), cpos[-L.cmem_len :]
        leaving = [(m.hidden, m.hidden[:, :n_drop]) for m in mems.layers]
        with torch.no_grad():
            return self._compress_leaving(kept, cm, cpos, leaving, mems.offset, L.cmem_len)[0]

    def _compress_leaving(self, memory: Memory, cm: tuple[Tensor, ...] | None, cpos: tuple[int, ...],
                          leaving: list[tuple[Tensor, Tensor]], start: int, cmem_len: int,
                          ) -> tuple[Memory, Tensor | None]:
        """The next compressed memory: the states that left the memory (positions start ..) compressed
        in whole groups of c (a remainder, possible only after a segment whose length is not a
        multiple of c, is dropped: its oldest states), appended, the last cmem_len slots kept. With a
        trainable compression under autograd, also the attention-reconstruction loss summed over
        layers (0 times the parameters when nothing left: every parameter takes part in every step,
        as DistributedDataParallel wants)."""
        c = self.config.cmem_ratio
        n_leave = leaving[0][1].shape[1]
        groups = n_leave // c
        r = n_leave - groups * c
        train_fn = self.config.cmem_fn != "mean" and torch.is_grad_enabled()
        loss = None
        if train_fn:
            loss = sum(p.sum() for p in self.compress.parameters()) * 0.0
        if groups == 0:
            return replace(memory, cmem=cm, cmem_pos=cpos), loss
        slots = []
        for i, (h, old) in enumerate(leaving):
            old = old[:, r:]
            if train_fn:
                comp = self.compress[i](old)
                loss = loss + reconstruction_loss(self.layers[i], h, old, comp)
                comp = comp.detach()
            else:
                comp = self.compress_states(i, old)
            comp = comp.to(old.dtype)
            slots.append(comp if cm is None else torch.cat([cm[i], comp], dim=1)[:, -cmem_len:])
        pos = (cpos + tuple(start + r + g * c for g in range(groups)))[-cmem_len:]
        return replace(memory, cmem=tuple(slots), cmem_pos=pos), loss

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
        Cc = L.cmem_len if self.compress is not None else 0  # compressed slots in front of the ring
        shape = (batch_size, c.n_head, Cc + W, c.d_head)
        layers = tuple(LayerMemory(torch.zeros(batch_size, W, c.d_model, device=p.device, dtype=dtype) if Cc
                                   else None,
                                   torch.zeros(shape, device=p.device, dtype=dtype),
                                   torch.zeros(shape, device=p.device, dtype=dtype)) for _ in self.layers)
        rel = abs_pos = inv_freq = cmem_rel = None
        with torch.no_grad():
            if self.rotary:
                inv_freq = self._inv_freq(p.device)
            elif self.relative:
                d = torch.arange(W, device=p.device)  # distances 0 .. W-1
                if L.clamp_len >= 0:
                    d = d.clamp(max=L.clamp_len)
                pos = self._rel_pos(d, p.dtype)  # (W, D)
                rel = tuple(layer.attn.rel_keys(pos).to(dtype).contiguous() for layer in self.layers)
                if Cc:  # compressed slots: distances x - (c-1)/2, x = query position - slot start
                    x = torch.arange(W + c.cmem_ratio * Cc + 1, device=p.device, dtype=torch.float64)
                    d = x - (c.cmem_ratio - 1) / 2
                    if L.clamp_len >= 0:
                        d = d.clamp(max=L.clamp_len)
                    pos = self._rel_pos(d, p.dtype)
                    cmem_rel = tuple(layer.attn.rel_keys(pos).to(dtype).contiguous() for layer in self.layers)
            else:
                abs_pos = self._abs_pos(L.tgt_len, p.device, dtype)  # (tgt_len, D)
        prior = None
        if self.cascade:  # every stream's cascade from its start (on the CPU)
            prior = self.lp.empty(batch_size)
        elif self.lp is not None:  # the prior's last tokens (masked until they exist) and coefficients
            fitted = self.lp.fitted
            z = lambda *shape, dt=torch.float64: torch.zeros(*shape, dtype=dt, device=p.device)  # noqa: E731
            prior = PriorState(
                z(batch_size, self.lp.keep, dt=torch.long),
                z(batch_size, self.lp.order) if fitted else None,
                z(batch_size, dt=torch.long),
                z(batch_size, self.lp.level_span()) if fitted else None,
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
            cmem_pos=torch.full((Cc,), -(2**40), dtype=torch.long, device=p.device) if Cc else None,
            cmem_rel=cmem_rel,
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
        Cc = cache.cmem_slots
        if Cc and not (cache.t.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            self.compress_cache(cache)  # (a captured graph never compresses: its decoder calls this)
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
        prior_inputs = None
        if self.cascade:  # the cascade steps on the CPU (no CUDA graph for these models), in place
            if h.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("a model with the cascade prior cannot be captured in a CUDA graph")
            prior_inputs, _ = self.lp.context(tokens, cache.prior, pos[None, :].expand(tokens.shape[0], n),
                                              in_place=True)
            h = h + self.lp.embed(prior_inputs).to(h.dtype)
        h = self.drop(h)
        dtype = cache.layers[0].keys.dtype
        crel_idx = None
        if Cc:  # the compressed slots (all filled ones are in every query's past)
            hidden = torch.cat([(cache.cmem_pos < 0)[None].expand(n, Cc), hidden], dim=1)
            if cache.cmem_rel is not None:
                x = pos[:, None] - cache.cmem_pos[None, :]  # (n, C)
                crel_idx = x.clamp(0, cache.cmem_rel[0].shape[1] - 1)
        mask = torch.zeros((n, Cc + W), device=h.device, dtype=dtype).masked_fill_(hidden, float("-inf"))
        dist = dist.clamp(0, W - 1)
        rope = None if cache.inv_freq is None else rotary_tables(pos, cache.inv_freq, dtype)
        with sdpa_backends(h.device):
            for i, (layer, ring) in enumerate(zip(self.layers, cache.layers)):
                rel_k = cache.rel_keys[i] if cache.rel_keys is not None else None
                if Cc:  # the layer's input, kept until it is compressed
                    ring.hidden.index_copy_(1, slots, h.to(ring.hidden.dtype))
                crel = None if crel_idx is None else (cache.cmem_rel[i], crel_idx)
                h = layer.step(h, ring, slots + Cc, rel_k, dist, mask, rope, crel)
        if cache.prior is not None and not self.cascade:  # the prior looks back as far as the stream goes
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

    @torch.no_grad()
    def compress_cache(self, cache: DecodingCache) -> None:
        """At a segment boundary, compress the states that have left the cache's memory into its
        compressed slots, as the forward pass does when a segment ends: the groups of cmem_ratio
        positions below (boundary - mem_len) not compressed yet, each layer's inputs read from the ring,
        compressed, projected to keys and values (rotary: rotated at the slot's centroid) and written
        to slot (group index mod C). A no-op away from a boundary or when done; the decoders call it
        before a replayed CUDA graph (which never compresses)."""
        if not cache.cmem_slots:
            return
        L = cache.lengths
        s = cache.position
        c = self.config.cmem_ratio
        end = s - L.mem_len
        begin = cache.compressed_through
        if s % L.tgt_len or end - begin < c:
            return
        groups = (end - begin) // c
        starts = torch.arange(begin, begin + groups * c, c, device=cache.t.device)  # (g,)
        positions = (starts[:, None] + torch.arange(c, device=starts.device)[None]).flatten()
        ring = torch.remainder(positions, cache.slots)
        cslots = torch.remainder(torch.div(starts, c, rounding_mode="floor"), cache.cmem_slots)
        rope = None
        if cache.inv_freq is not None:
            rope = rotary_tables(self._centroids(starts, starts.device), cache.inv_freq,
                                 cache.layers[0].keys.dtype)
        for i, (layer, mem) in enumerate(zip(self.layers, cache.layers)):
            comp = self.compress_states(i, mem.hidden.index_select(1, ring))  # (B, g, D)
            k, v = layer.attn.slot_keys_values(layer.attn_norm(comp) if layer.pre_norm else comp, rope)
            mem.keys.index_copy_(2, cslots, k.to(mem.keys.dtype))
            mem.values.index_copy_(2, cslots, v.to(mem.values.dtype))
        cache.cmem_pos.index_copy_(0, cslots, starts)
        cache.compressed_through = begin + groups * c


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
