"""The portable model: a trained Transformer-XL re-expressed in integers, so that its predictions are
the same bits on every CPU, at every thread count, and on a GPU (the lossless codec codes with it).

``PortableModel(model)`` quantises a float model's weights (deterministically: the same checkpoint
gives the same integers everywhere) and runs the model's decoding step
(:meth:`TransformerXL.step`'s semantics: a ring of W = mem_len + tgt_len slots, segments of tgt_len
from the stream's start, the same visibility of keys) in the fixed-point arithmetic of
:mod:`txl_audio.numerics`: int64 tensors, float64 products of integers that are exact, and tables for
softmax, sigmoid and sin/cos. Because every quantity is an exactly computed integer, feeding a stream
a whole segment at a time gives the very same numbers as feeding it one token at a time: the codec's
encoder scores a chunk in a few parallel passes and the decoder steps through it.

What comes out per position is the head's parameters in integers (:class:`HeadParams`); the codec
turns them into probability tables (:mod:`txl_audio.coding`). Training and evaluation keep using the
float model: this one only approximates it (its code lengths are measured against the float model's
NLL in docs/results.md).

Supported: relative, rotary and absolute attention; pre- and post-norm; same_length and clamp_len;
the compressive memory (mean or conv); the softmax head (8-bit, or 65,536-way), the dual softmax and
the logistic mixture; no prior or the network-predicted linear prior. The fitted LPC prior (a float
Levinson solve) has no portable form: :class:`~txl_audio.numerics.NotExact` says so.

Shape letters as in transformer.py: B batch, n tokens of a call, W ring slots, C compressed slots,
H heads, Dh head size, D d_model, K mixture components.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import Tensor

from txl_audio.config import Lengths
from txl_audio.numerics import (
    ACT_BITS,
    EXP_FRAC_BITS,
    MATMUL_IN_MAX,
    QKV_MAX,
    LayerNorm,
    Linear,
    NotExact,
    exact_matmul,
    exp2_table,
    log2_table,
    log2_units,
    quantise,
    rotary_q,
    round_div,
    round_shift,
    sinusoid_q,
    softmax_weights,
)

RESIDUAL_MAX = (1 << 40) - 1  # the residual stream is clamped here (values +-2^28): no int64 overflow
TRIG_BITS = 14  # sin/cos tables' fractional bits
PRE_SHIFT = 14  # score differences are shifted right by this before the log2 conversion
MAX_KEYS = 1 << 14  # keys per query: with weights < 2^16 and values < 2^22, sums stay below 2^53
PRIOR_BITS = 24  # fractional bits of the network prior's coefficients
HALF = 32_768
ONE_MATMUL_QUERIES = 16  # calls of up to this many tokens (decoding) get their position scores by matmul


@dataclass
class HeadParams:
    """One call's predictions in integers, (B, n, ...) each (None where the head has none).

    ``logits``: softmax heads' logits (ACT_BITS fractional bits; the 8-bit head, the 65,536-way head,
    the dual softmax's coarse byte); ``hidden``: the final hidden state (the dual softmax's fine byte
    needs it with the coarse byte); ``mix``: the logistic mixture's [logit pi | mu | log s] raw
    projections; ``center``: the mixture's centre in levels from the middle (ACT_BITS bits: the prior's
    prediction, else 0); ``base``: log2 of the mixture's unit of offsets and scales in levels (2^-10
    units: the cascade's residual scale; None: full scale); ``shift``: the dual softmax's residual shift
    (int). See :mod:`txl_audio.coding`."""

    logits: Tensor | None = None
    hidden: Tensor | None = None
    mix: Tensor | None = None
    center: Tensor | None = None
    shift: Tensor | None = None
    base: Tensor | None = None  # the mixture's scale unit: log2 of levels, 2^-10 (None: full scale)

    FIELDS = ("logits", "hidden", "mix", "center", "shift", "base")

    def select(self, idx) -> HeadParams:
        return HeadParams(*(None if getattr(self, f) is None else getattr(self, f)[idx] for f in self.FIELDS))


@dataclass
class PortableCache:
    """Ring buffers (as :class:`~txl_audio.model.memory.DecodingCache`), in integers: per layer keys and
    values (B, H, C + W, Dh) int64, each layer's inputs (B, W, D) when there is a compressed memory,
    the stream position in each slot, the stream's next position, and the prior's token history."""

    lengths: Lengths
    keys: list[Tensor]
    values: list[Tensor]
    inputs: list[Tensor] | None
    slot_pos: Tensor
    position: int
    history: Tensor | None  # (B, P) the last P tokens (the network prior's window)
    cmem_pos: Tensor | None = None
    cascade: object | None = None  # the cascade prior's CascadeState (its integers: the float model's)
    compressed_through: int = 0

    @property
    def slots(self) -> int:
        return self.slot_pos.shape[0]

    @property
    def cmem_slots(self) -> int:
        return 0 if self.cmem_pos is None else self.cmem_pos.shape[0]


class _Layer:
    def __init__(self, layer, cfg, device) -> None:
        a = layer.attn
        H, Dh = a.n_head, a.d_head
        w = a.qkv.weight
        self.pre_norm = layer.pre_norm
        self.kv = Linear(w[H * Dh :], None, name="attention keys and values").to(device)
        # all three in one product (each output row is quantised on its own: the same integers)
        self.qkv = Linear(w, None, name="attention queries, keys and values").to(device)
        self.out = Linear(a.out.weight, None, name="attention output").to(device)
        self.relative = a.relative
        if a.relative:
            self.r_net = Linear(a.r_net.weight, None, in_max=1 << 12, name="relative keys").to(device)
            self.u = quantise(a.u).to(device)
            self.v = quantise(a.v).to(device)
        self.attn_norm = LayerNorm(layer.attn_norm.weight, layer.attn_norm.bias,
                                   layer.attn_norm.eps).to(device)
        self.ff_norm = LayerNorm(layer.ff_norm.weight, layer.ff_norm.bias, layer.ff_norm.eps).to(device)
        self.fc1 = Linear(layer.ff.fc1.weight, layer.ff.fc1.bias, name="feed-forward 1").to(device)
        self.fc2 = Linear(layer.ff.fc2.weight, layer.ff.fc2.bias, name="feed-forward 2").to(device)
        self.H, self.Dh = H, Dh
        self.mul, self.mul_shift = log2_units(a.scale, 2 * ACT_BITS, PRE_SHIFT)

    def rel_keys(self, pos_q: Tensor) -> Tensor:
        """(R, D) sinusoids (ACT_BITS) -> (H, R, Dh) relative keys."""
        r = self.r_net(pos_q).clamp(-QKV_MAX, QKV_MAX)
        return r.view(-1, self.H, self.Dh).transpose(0, 1).contiguous()

    def slot_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, g, D) layer inputs (normalised already for pre-norm) -> keys, values (B, H, g, Dh)."""
        B, g, _ = x.shape
        kv = self.kv(x).clamp(-QKV_MAX, QKV_MAX).view(B, g, 2, self.H, self.Dh)
        return kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)

    def ff(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """The feed-forward block; with ``residual``: residual + ff(x), clamped to the residual range
        (added in the output layer's pass)."""
        y = self.fc1(x, lo=0, hi=MATMUL_IN_MAX)
        if residual is None:
            return self.fc2(y)
        return self.fc2(y, add=residual, lo=-RESIDUAL_MAX, hi=RESIDUAL_MAX)

    def finish(self, x: Tensor, a: Tensor) -> Tensor:
        """After attention: pre-norm gets x + attention already added and clamped (the output
        projection's pass does it), post-norm the attention output."""
        if self.pre_norm:
            return self.ff(self.ff_norm(a), residual=a)
        x = self.attn_norm(x + a)
        return self.ff_norm(x + self.ff(x))


# not parallel: numba's worker threads spin between calls and slow the tensor operations around
# every step by more than the kernel gains (measured: 2.5x slower steps at batch 256 on 2 cores).
# fastmath's reassoc/contract only: every sum here is of integer-valued float64 products whose absolute
# values sum below 2^53 (QKV_MAX, MAX_KEYS), so every partial sum in any order is an exact integer and
# reordering or fusing cannot change a bit; the flags let LLVM vectorise the sums.
@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def _attend_rows(qu, qv, keys, values, table, idx, by_dist, hidden, mul, mul_shift,
                 exp_table):  # pragma: no cover
    """Attention in integers for n queries per row, reading the int32 ring in place (no float64 copies
    of it, no (B, H, n, S) temporaries): the same integers as the tensor path of ``_attend``. qu, qv
    (B, H, n, Dh) int64 (queries plus the content and position biases); keys, values (B, H, S, Dh)
    int32; the position term either from table (H, R, Dh) int64 relative keys with idx (n, S) each
    query's row in it for each slot, or, where by_dist (H, B n, R) float64 is not empty, those scores
    already computed (qv of row b, query i against every row of the table: the caller's matmul for
    one-token steps); neither (R = 0): no position term; hidden (n, S) bool."""
    B, H, S, Dh = keys.shape
    n = qu.shape[2]
    out = np.zeros((B, H, n, Dh), dtype=np.int64)
    rel = table.shape[1] > 0
    given = by_dist.shape[2] > 0
    fmask = (1 << EXP_FRAC_BITS) - 1
    scores = np.empty(S, dtype=np.int64)
    acc = np.empty(Dh, dtype=np.float64)
    q1 = np.empty(Dh, dtype=np.float64)
    q2 = np.empty(Dh, dtype=np.float64)
    for bh in range(B * H):
        b = bh // H
        h = bh % H
        for i in range(n):
            for d in range(Dh):
                q1[d] = qu[b, h, i, d]
                q2[d] = qv[b, h, i, d] if rel and not given else 0.0
            top = -(1 << 62)
            for s in range(S):
                sc = 0.0
                for d in range(Dh):
                    sc += q1[d] * keys[b, h, s, d]
                if given:
                    sc += by_dist[h, b * n + i, idx[i, s]]
                elif rel:
                    r = idx[i, s]
                    for d in range(Dh):
                        sc += q2[d] * table[h, r, d]
                isc = np.int64(sc)
                scores[s] = isc
                if not hidden[i, s] and isc > top:
                    top = isc
            for d in range(Dh):
                acc[d] = 0.0
            total = 0
            for s in range(S):
                if hidden[i, s]:
                    continue
                diff = (top - scores[s]) >> PRE_SHIFT
                if diff > (1 << 38):
                    diff = 1 << 38
                y = (diff * mul) >> mul_shift
                m = y >> EXP_FRAC_BITS
                if m > 16:
                    continue
                w = exp_table[y & fmask] >> m
                total += w
                wf = np.float64(w)
                for d in range(Dh):
                    acc[d] += wf * values[b, h, s, d]
            for d in range(Dh):
                out[b, h, i, d] = (2 * np.int64(acc[d]) + total) // (2 * total)
    return out


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (..., L, Dh) int64 rotated by cos, sin (L, r/2) (TRIG_BITS): pairs i, i + r/2 as
    model.attention.apply_rotary."""
    h = cos.shape[-1]
    x1, x2, rest = x[..., :h], x[..., h : 2 * h], x[..., 2 * h :]
    return torch.cat([round_shift(x1 * cos - x2 * sin, TRIG_BITS),
                      round_shift(x2 * cos + x1 * sin, TRIG_BITS), rest], dim=-1)


class PortableModel:
    """A float :class:`~txl_audio.model.TransformerXL` in integers (see the module docstring).
    ``init_cache(B)``, then ``step(tokens (B, n), cache) -> HeadParams`` (B, n, ...)."""

    def __init__(self, model, device: torch.device | str | None = None) -> None:
        c = model.config
        self.config = c
        device = torch.device(device) if device is not None else next(model.parameters()).device
        self.device = device
        # on the CPU, attention runs in a numba kernel over the int32 ring (the same integers as the
        # tensor path, which a GPU uses; tests compare the two by turning this off)
        self.kernel = True
        if c.cutoffs:
            raise NotExact("adaptive softmax (text models) has no portable form: the codec codes audio")
        self.cascade = model.lp if getattr(model, "cascade", False) else None
        if c.lp_order and c.lp_coefficients == "fitted":
            raise NotExact("the fitted linear-prediction prior (a float Levinson solve per block) has no "
                           "portable form; models with the cascade prior or without a prior do")
        self.head = c.head
        emb = model.word_emb
        if c.head == "softmax":
            self.emb = quantise(emb.weight * model.emb_scale).to(device)
            self.emb_hi = self.emb_lo = None
            out_w = model.out.weight
            self.out = Linear(out_w, model.out.bias, name="output layer").to(device)
        else:
            self.emb = None
            self.emb_hi = quantise(emb.hi.weight * model.emb_scale).to(device)
            self.emb_lo = quantise(emb.lo.weight * model.emb_scale).to(device)
            o = model.out
            if c.head == "dual_softmax":
                self.out = Linear(o.coarse.weight, o.coarse.bias, name="coarse byte").to(device)
                self.fine_in = Linear(o.fine_in.weight, o.fine_in.bias, name="fine input").to(device)
                self.coarse_emb = quantise(o.coarse_emb.weight).to(device)
                self.fine = Linear(o.fine.weight, o.fine.bias, name="fine byte").to(device)
            else:
                self.out = Linear(o.proj.weight, o.proj.bias, name="mixture").to(device)
                self.K = o.K
        self.layers = [_Layer(layer, c, device) for layer in model.layers]
        fn = model.final_norm
        self.final_norm = LayerNorm(fn.weight, fn.bias, fn.eps).to(device) if c.pre_norm else None
        self.prior_order = c.lp_order if self.cascade is None else 0
        if self.cascade is not None:  # the cascade's features, projected into the embedding
            f = model.lp.features
            self.features = Linear(f.weight, f.bias, in_max=1 << ACT_BITS, name="cascade features").to(device)
            self.log2_table = torch.from_numpy(log2_table()).to(device)
        elif c.lp_order:  # the network prior: coefficients from h, with 24 fractional bits
            self.coef = Linear(model.lp.coef.weight, model.lp.coef.bias, out_bits=PRIOR_BITS,
                               name="prior coefficients").to(device)
        self.cmem = None
        if c.cmem_len:
            self.cmem = []
            for comp in model.compress:
                if comp.conv is None:
                    self.cmem.append(None)
                else:  # the strided conv as a linear map of each group's c x D inputs
                    w = comp.conv.weight  # (D_out, D_in, c)
                    self.cmem.append(Linear(w.reshape(w.shape[0], -1), comp.conv.bias,
                                            name="compression").to(device))
        self.relative, self.rotary = c.attention == "relative", c.attention == "rotary"
        self.exp_table = torch.from_numpy(exp2_table(16)).to(device)
        self._trig: dict = {}
        self._fused = None  # portable_step.FusedLayers, made at the first one-token CPU step

    def use_kernels(self, on: bool) -> None:
        """The CPU's numba kernels (attention, LayerNorm, the Linear's passes) on, or off: then every
        step runs the tensor operations a GPU runs (the same integers: the tests compare the two)."""
        self.kernel = on
        for obj in self._numerics():
            obj.kernel = on

    def _numerics(self):
        seen = set()
        for holder in [self, *self.layers]:
            for v in vars(holder).values():
                for o in (v if isinstance(v, list) else [v]):
                    if isinstance(o, (Linear, LayerNorm)) and id(o) not in seen:
                        seen.add(id(o))
                        yield o

    # ---- tables ---------------------------------------------------------------------------------------

    def _rope(self, numerators: Tensor) -> tuple[Tensor, Tensor]:
        """Rotary cos, sin (L, r/2) at positions numerators / 2 (half-integers: compressed slots)."""
        c = self.config
        need = int(numerators.max().item()) + 1
        have = self._trig.get("rope")
        if have is None or have[0].shape[0] < need:
            size = max(need, 2 * (have[0].shape[0] if have is not None else 4096))
            cos, sin = rotary_q(0, size, 2, c.rotary_dims, c.rotary_base, TRIG_BITS)
            have = (cos.to(self.device), sin.to(self.device))
            self._trig["rope"] = have
        return have[0][numerators], have[1][numerators]

    def _rel_keys(self, L: Lengths, count: int, start_num: int = 0, denom: int = 1,
                  key: str = "ring") -> list[Tensor]:
        """Per layer (H, count, Dh): relative keys of the distances (start_num + i) / denom,
        clamped to clamp_len."""
        cache_key = (key, count, start_num, denom, L.clamp_len)
        if cache_key not in self._trig:
            D = self.config.d_model
            num = torch.arange(start_num, start_num + count)
            if L.clamp_len >= 0:
                num = num.clamp(max=L.clamp_len * denom)
            lo, hi = int(num.min()), int(num.max())
            table = sinusoid_q(lo, hi - lo + 1, denom, D, ACT_BITS)[num - lo].to(self.device)
            self._trig[cache_key] = [layer.rel_keys(table) for layer in self.layers]
        return self._trig[cache_key]

    # ---- the cache --------------------------------------------------------------------------------------

    def init_cache(self, batch_size: int, lengths: Lengths | None = None) -> PortableCache:
        c = self.config
        L = c.lengths() if lengths is None else lengths
        W = L.mem_len + L.tgt_len
        Cc = L.cmem_len if self.cmem is not None else 0
        if Cc + W > MAX_KEYS:
            raise NotExact(f"{Cc + W} keys per query: the portable model allows {MAX_KEYS}")
        dev = self.device
        shape = (batch_size, c.n_head, Cc + W, c.d_head)
        z = lambda *s: torch.zeros(*s, dtype=torch.long, device=dev)  # noqa: E731
        # keys and values are below 2^22: int32 halves the ring's memory (and its traffic per step)
        z32 = lambda *s: torch.zeros(*s, dtype=torch.int32, device=dev)  # noqa: E731
        return PortableCache(
            lengths=L, keys=[z32(*shape) for _ in self.layers], values=[z32(*shape) for _ in self.layers],
            inputs=[z(batch_size, W, c.d_model) for _ in self.layers] if Cc else None,
            slot_pos=torch.full((W,), -(2**40), dtype=torch.long, device=dev), position=0,
            history=z(batch_size, self.prior_order) + HALF if self.prior_order else None,
            cmem_pos=torch.full((Cc,), -(2**40), dtype=torch.long, device=dev) if Cc else None,
            cascade=self.cascade.empty(batch_size) if self.cascade is not None else None)

    # ---- the step -----------------------------------------------------------------------------------------

    def _embed(self, tokens: Tensor) -> Tensor:
        if self.emb is not None:
            return self.emb[tokens]
        return self.emb_hi[tokens >> 8] + self.emb_lo[tokens & 255]

    @torch.no_grad()
    def step(self, tokens: Tensor, cache: PortableCache) -> HeadParams:
        """Feed tokens (B, n) after what the cache has seen; the predictions for each (B, n, ...)."""
        n = tokens.shape[1]
        T = cache.lengths.tgt_len
        pieces, s = [], 0
        while s < n:
            e = min(n, s + T - (cache.position % T))
            pieces.append(self._piece(tokens[:, s:e], cache))
            s = e
        if len(pieces) == 1:
            return pieces[0]
        fields = {}
        for name in HeadParams.FIELDS:
            parts = [getattr(p, name) for p in pieces]
            fields[name] = None if parts[0] is None else torch.cat(parts, dim=1)
        return HeadParams(**fields)

    def _piece(self, tokens: Tensor, cache: PortableCache) -> HeadParams:
        L = cache.lengths
        B, n = tokens.shape
        W, Cc = cache.slots, cache.cmem_slots
        dev = self.device
        tokens = tokens.to(dev)
        if n == 1 and not Cc and self.kernel and dev.type == "cpu":  # a decoder's step
            return self._step_one(tokens, cache)
        if Cc:
            self._compress(cache)
        p0 = cache.position
        pos = p0 + torch.arange(n, device=dev)
        slots = torch.remainder(pos, W)
        cache.slot_pos[slots] = pos
        dist = pos[:, None] - cache.slot_pos[None, :]  # (n, W)
        limit = torch.remainder(pos, L.tgt_len) + L.mem_len
        if L.same_length and L.mem_len > 0:
            limit = limit.clamp(max=L.mem_len - 1)
        hidden = (dist < 0) | (dist > limit[:, None])
        if Cc:
            hidden = torch.cat([(cache.cmem_pos < 0)[None].expand(n, Cc), hidden], dim=1)
        dist = dist.clamp(0, W - 1)
        h = self._embed(tokens)  # (B, n, D)
        cas = None
        if self.cascade is not None:
            cas = self._cascade(tokens, pos, cache)
            h = h + self.features(cas[0])
        if self.config.attention == "absolute":
            h = h + self._absolute(L)[torch.remainder(pos, L.tgt_len)]
        rope = crel = None
        if self.rotary:
            rope = self._rope(2 * pos)
        rel = self._rel_keys(L, W) if self.relative else None
        if Cc and self.relative:
            cr = self.config.cmem_ratio
            X = W + cr * Cc + 1
            crel = self._rel_keys(L, 2 * X, -(cr - 1), 2, key="cmem")
            x = (pos[:, None] - cache.cmem_pos[None, :]).clamp(0, X - 1)
            crel_idx = 2 * x  # numerator index of x - (c-1)/2 in the table
        for i, layer in enumerate(self.layers):
            if Cc:
                cache.inputs[i][:, slots] = h
            x_in = layer.attn_norm(h) if layer.pre_norm else h
            a = self._attend(layer, x_in, cache.keys[i], cache.values[i], slots + Cc, dist, hidden, rope,
                             None if rel is None else rel[i],
                             None if crel is None else (crel[i], crel_idx), Cc,
                             residual=h if layer.pre_norm else None)
            h = layer.finish(h, a)
        if self.final_norm is not None:
            h = self.final_norm(h)
        cache.position += n
        return self._head(h, tokens, cache, cas)

    def _step_one(self, tokens: Tensor, cache: PortableCache) -> HeadParams:
        """:meth:`_piece` for one token per row on the CPU without a compressed memory (a decoder's
        step): the same integers, with the step's bookkeeping in NumPy and every layer in
        :mod:`portable_step`'s fused passes (at batch 4, ~60% of a step was tensor-operation overhead)."""
        L = cache.lengths
        W = cache.slots
        p0 = cache.position
        slot = p0 % W
        slot_pos = cache.slot_pos.numpy()  # shares the tensor's memory
        slot_pos[slot] = p0
        dist = p0 - slot_pos  # (W,)
        limit = p0 % L.tgt_len + L.mem_len
        if L.same_length and L.mem_len > 0:
            limit = min(limit, L.mem_len - 1)
        hidden = (dist < 0) | (dist > limit)
        dist = np.clip(dist, 0, W - 1)
        h = self._embed(tokens)  # (B, 1, D)
        cas = None
        if self.cascade is not None:
            cas = self._cascade(tokens, torch.tensor([p0]), cache)
            h = h + self.features(cas[0])
        if self.config.attention == "absolute":
            h = h + self._absolute(L)[p0 % L.tgt_len]
        if self._fused is None:
            from txl_audio.model.portable_step import FusedLayers

            self._fused = FusedLayers(self)
        c = self.config
        if self.relative:
            tables = [self._table_t(r, r).numpy() for r in self._rel_keys(L, W)]
        else:
            tables = [np.zeros((c.n_head, c.d_head, 0))] * len(self.layers)
        trig = None
        if self.rotary:
            cos, sin = self._rope(torch.tensor([2 * p0]))
            trig = (cos[0].numpy(), sin[0].numpy())
        out = self._fused.run(h[:, 0].contiguous().numpy(), [k.numpy() for k in cache.keys],
                              [v.numpy() for v in cache.values], slot, tables, dist, hidden, trig)
        h = torch.from_numpy(out)[:, None]
        if self.final_norm is not None:
            h = self.final_norm(h)
        cache.position += 1
        return self._head(h, tokens, cache, cas)

    def _absolute(self, L: Lengths) -> Tensor:
        """Absolute attention's sinusoids (tgt_len, D) (ACT_BITS), made once."""
        key = ("absolute", L.tgt_len)
        if key not in self._trig:
            self._trig[key] = sinusoid_q(0, L.tgt_len, 1, self.config.d_model, ACT_BITS).to(self.device)
        return self._trig[key]

    def _attend(self, layer: _Layer, x: Tensor, keys: Tensor, values: Tensor, slots: Tensor, dist: Tensor,
                hidden: Tensor, rope, rel_k: Tensor | None, crel, Cc: int, residual: Tensor | None = None
                ) -> Tensor:
        """Attention of x (B, n, D) over the ring: the output projection, plus ``residual`` clamped to
        the residual range where given (in the projection's pass)."""
        B, n, _ = x.shape
        H, Dh = layer.H, layer.Dh
        qkv = layer.qkv(x, lo=-QKV_MAX, hi=QKV_MAX).view(B, n, 3, H, Dh)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # (B, H, n, Dh) each
        if rope is not None:  # (a rotation can grow a pair by sqrt 2: back within the bound)
            q = _rotate(q, *rope).clamp(-QKV_MAX, QKV_MAX)
            k = _rotate(k, *rope).clamp(-QKV_MAX, QKV_MAX)
        keys[:, :, slots] = k.to(keys.dtype)
        values[:, :, slots] = v.to(values.dtype)
        if layer.relative:
            qu = (q + layer.u[:, None]).clamp(-QKV_MAX, QKV_MAX)
            qv = (q + layer.v[:, None]).clamp(-QKV_MAX, QKV_MAX)
        else:
            qu, qv = q, None
        clamp = {} if residual is None else {"add": residual, "lo": -RESIDUAL_MAX, "hi": RESIDUAL_MAX}
        if self.kernel and keys.device.type == "cpu":
            o = self._attend_kernel(qu, qv, keys, values, dist, hidden, rel_k, crel, layer)
            return layer.out(o.transpose(1, 2).reshape(B, n, H * Dh), **clamp)
        kf, vf = keys.double(), values.double()
        if layer.relative:
            scores = exact_matmul(qu, kf.transpose(-1, -2))  # (B, H, n, C+W)
            by_dist = exact_matmul(qv, rel_k.transpose(-1, -2)[None])  # (B, H, n, W)
            pos_score = by_dist.gather(-1, dist.expand(B, H, n, dist.shape[1]))
            if crel is not None:
                table, idx = crel
                by_c = exact_matmul(qv, table.transpose(-1, -2)[None])
                pos_score = torch.cat([by_c.gather(-1, idx.expand(B, H, n, idx.shape[1])), pos_score], -1)
            scores = scores + pos_score
        else:
            scores = exact_matmul(qu, kf.transpose(-1, -2))
        hid = hidden.expand(B, H, n, hidden.shape[-1])
        top = scores.masked_fill(hid, -(2**62)).amax(-1, keepdim=True)
        d = ((top - scores) >> PRE_SHIFT).clamp(max=1 << 38)
        y = (d * layer.mul) >> layer.mul_shift
        p = softmax_weights(y, self.exp_table, 16).masked_fill(hid, 0)  # (B, H, n, C+W), <= 2^16
        o = round_div(exact_matmul(p, vf), p.sum(-1, keepdim=True))  # (B, H, n, Dh)
        return layer.out(o.transpose(1, 2).reshape(B, n, H * Dh), **clamp)

    def _attend_kernel(self, qu, qv, keys, values, dist, hidden, rel_k, crel, layer) -> Tensor:
        """The numba kernel (CPU): (B, H, n, Dh) int64."""
        H, Dh = layer.H, layer.Dh
        B, _, n, _ = qu.shape
        by_dist = np.zeros((1, 1, 0))
        if rel_k is None:
            table = np.zeros((H, 0, Dh), dtype=np.int64)
            idx = np.zeros(hidden.shape, dtype=np.int64)
            qv_np = np.zeros((B, H, n, Dh), dtype=np.int64)
        else:
            W = rel_k.shape[1]
            if crel is None:
                t, idx = rel_k, dist.numpy()
            else:  # one table: the compressed slots' distances after the ring's
                ctab, cidx = crel
                t = torch.cat([rel_k, ctab], dim=1)
                idx = torch.cat([cidx + W, dist], dim=1).numpy()
            table = t.numpy()
            qv_np = qv.contiguous().numpy()
            # the position scores of every row: one matmul per head (exact), on one thread only: torch's
            # intra-op threads make these small float64 products 100x slower (measured: 0.47 ms instead of
            # 4 us at batch 4 with 2 threads), and the kernel's own loop is then the faster one
            if n <= ONE_MATMUL_QUERIES and torch.get_num_threads() == 1:
                q = qv.permute(1, 0, 2, 3).reshape(H, B * n, Dh).double()
                by_dist = torch.bmm(q, self._table_t(rel_k, t)).numpy()  # (H, B n, R)
        o = _attend_rows(qu.contiguous().numpy(), qv_np, keys.numpy(), values.numpy(),
                         np.ascontiguousarray(table), np.ascontiguousarray(idx), by_dist,
                         np.ascontiguousarray(hidden.numpy()), layer.mul, layer.mul_shift,
                         self.exp_table.numpy())
        return torch.from_numpy(o)

    def _table_t(self, rel_k: Tensor, table: Tensor) -> Tensor:
        """(H, Dh, R) float64 of ``table`` (H, R, Dh): a layer's ring table ``rel_k``, alone or with the
        compressed slots' rows after it (integers: exact); kept while ``rel_k`` is."""
        key = ("matmul", id(rel_k), table.shape[1])
        have = self._trig.get(key)
        if have is None or have[0] is not rel_k:
            have = (rel_k, table.double().transpose(1, 2).contiguous())
            self._trig[key] = have
        return have[1]

    def _compress(self, cache: PortableCache) -> None:
        """At a segment boundary: compress the groups of c positions that left the memory (as
        TransformerXL.compress_cache)."""
        L = cache.lengths
        s = cache.position
        c = self.config.cmem_ratio
        end = s - L.mem_len
        begin = cache.compressed_through
        if s % L.tgt_len or end - begin < c:
            return
        groups = (end - begin) // c
        dev = self.device
        starts = torch.arange(begin, begin + groups * c, c, device=dev)
        positions = (starts[:, None] + torch.arange(c, device=dev)[None]).flatten()
        ring = torch.remainder(positions, cache.slots)
        cslots = torch.remainder(torch.div(starts, c, rounding_mode="floor"), cache.cmem_slots)
        rope = self._rope(2 * starts + (c - 1)) if self.rotary else None
        for i, layer in enumerate(self.layers):
            x = cache.inputs[i][:, ring]  # (B, g*c, D)
            B, _, D = x.shape
            x = x.view(B, groups, c, D)
            if self.cmem[i] is None:
                comp = round_div(x.sum(2), c)
            else:
                comp = self.cmem[i](x.transpose(2, 3).reshape(B, groups, D * c))
            comp = comp.clamp(-RESIDUAL_MAX, RESIDUAL_MAX)
            k, v = layer.slot_kv(layer.attn_norm(comp) if layer.pre_norm else comp)
            if rope is not None:
                k = _rotate(k, *rope)
            cache.keys[i][:, :, cslots] = k.clamp(-QKV_MAX, QKV_MAX).to(torch.int32)
            cache.values[i][:, :, cslots] = v.to(torch.int32)
        cache.cmem_pos[cslots] = starts
        cache.compressed_through = begin + groups * c

    # ---- the head --------------------------------------------------------------------------------------

    def _prior(self, h: Tensor, tokens: Tensor, cache: PortableCache) -> Tensor:
        """The network prior's prediction (B, n) in level units with PRIOR_BITS fractional bits."""
        P = self.prior_order
        B, n = tokens.shape
        ctx = torch.cat([cache.history, tokens], dim=1)  # (B, P + n)
        cache.history = ctx[:, n:]
        win = ctx.unfold(1, P, 1)[:, 1:].flip(-1) - HALF  # (B, n, P): x_t, x_{t-1}, ... in levels
        pos = cache.position - n + torch.arange(n, device=self.device)
        win = torch.where(torch.arange(P, device=self.device) <= pos[:, None], win, 0)
        a = self.coef(h.clamp(-MATMUL_IN_MAX, MATMUL_IN_MAX))  # (B, n, P) coefficients, 2^-24
        pred = (a.clamp(-(1 << 40), 1 << 40) * win).sum(-1)
        return pred.clamp(-HALF << PRIOR_BITS, (HALF - 1) << PRIOR_BITS)

    def _cascade(self, tokens: Tensor, pos: Tensor, cache: PortableCache) -> tuple[Tensor, Tensor, Tensor]:
        """The cascade over this piece (the float model's integers), in the portable model's terms:
        the features (B, n, 4) with ACT_BITS fractional bits, the prediction (B, n) in levels and the
        log2 of the scale in levels (2^-10)."""
        from txl_audio.model.cascade_prior import FEATURE_CLIP, run_cascade
        from txl_audio.model.cascade_prior import HALF as H0
        from txl_audio.model.prior import SCALE_UNIT, CascadeStream

        B, n = tokens.shape
        st = cache.cascade
        stream = CascadeStream(B, self.cascade.config)
        stream.F, stream.G = st.F.numpy(), st.G.numpy()
        x = tokens.cpu().numpy().astype(np.int64) - H0
        reset = np.broadcast_to((pos == 0).cpu().numpy()[None, :], (B, n))
        pc, sc, p, s, s1, last = run_cascade(stream, x, reset, st.pending.numpy())
        st.pending.copy_(torch.from_numpy(last))
        dev = self.device
        x, pc, sc, p, s, s1 = (torch.from_numpy(a).to(dev) for a in (x, pc, sc, p, s, s1))
        one = 1 << ACT_BITS
        assert FEATURE_CLIP == 16 and SCALE_UNIT == 16  # the integer forms below assume both

        def rel(a: Tensor, unit: Tensor) -> Tensor:  # clamp(a / (unit / 16) / 16, +-1) = a / unit
            return round_div(a << ACT_BITS, unit).clamp(-one, one)

        level = (self._log2(s + SCALE_UNIT) - (4 << 10)) << (ACT_BITS - 10) >> 4  # log2(1 + s/16) / 16
        feats = torch.stack([level, rel(p - x, s), rel(x - pc, sc), rel(s1 - p, s)], dim=-1)
        return feats, p, self._log2(s) - (4 << 10)

    def _log2(self, n: Tensor) -> Tensor:
        """log2 of positive int64 (below 2^53) in 2^-10 units: the exponent from frexp (exact), the
        mantissa's top 10 bits through a table."""
        m, e = torch.frexp(n.double())  # n = m 2^e, m in [0.5, 1): exact
        idx = ((m * 2048).long() - 1024).clamp(0, 1023)  # m * 2^11 in [1024, 2048): exact
        return ((e.long() - 1) << 10) + self.log2_table[idx]

    def _head(self, h: Tensor, tokens: Tensor, cache: PortableCache, cas=None) -> HeadParams:
        if self.head == "softmax":
            return HeadParams(logits=self.out(h))
        if cas is not None:
            _, p, base = cas
            if self.head == "dual_softmax":
                return HeadParams(logits=self.out(h), hidden=h, shift=p)
            return HeadParams(mix=self.out(h), center=p << ACT_BITS, base=base)
        pred = self._prior(h, tokens, cache) if self.prior_order else None
        if self.head == "dual_softmax":
            shift = torch.zeros_like(tokens) if pred is None else round_shift(pred, PRIOR_BITS)
            return HeadParams(logits=self.out(h), hidden=h, shift=shift)
        center = torch.zeros_like(tokens) if pred is None else round_shift(pred, PRIOR_BITS - ACT_BITS)
        return HeadParams(mix=self.out(h), center=center)

    def fine_logits(self, hidden: Tensor, coarse: Tensor) -> Tensor:
        """The dual softmax's fine-byte logits (N, 256) given the hidden states (N, D) and the coarse
        bytes (N,)."""
        a = self.fine_in(hidden) + self.coarse_emb[coarse]
        return self.fine(a.clamp(0, MATMUL_IN_MAX))


__all__ = ["HeadParams", "NotExact", "PortableCache", "PortableModel", "EXP_FRAC_BITS", "math"]
