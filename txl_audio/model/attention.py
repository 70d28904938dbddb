"""Multi-head attention for Transformer-XL: relative positions (Dai et al. 2019, section 3.3) and the
absolute-position baseline, over memory + segment, for whole segments and for cached decoding.

Shape letters: B = batch, T = queries (segment), M = memory positions, K = M + T keys,
H = heads, Dh = head size, D = d_model.

The relative score of query i and key j (eq. in section 3.3, E = layer input, R = sinusoid):

    A_ij = (E_i W_q)(E_j W_kE)^T          (a) content
         + (E_i W_q)(R_{i-j} W_kR)^T      (b) content-dependent position
         + u (E_j W_kE)^T                 (c) global content bias
         + v (R_{i-j} W_kR)^T             (d) global position bias
         = (q_i + u) k_j^T + (q_i + v) r_{i-j}^T

(a)+(c) is an ordinary attention score with queries q + u, so it runs inside
``scaled_dot_product_attention``; (b)+(d) enters SDPA as the additive float mask, together with the
-inf of masked keys. It is computed in one of two ways, one per layout of the keys:

- a segment over [memory; segment] (``forward``: training, validation, evaluation), keys at
  consecutive positions: a (T, K+1) matrix against every distance, *shifted* (``rel_shift``, a free
  view) so that column j holds distance i-j. Three implementations of the same arithmetic, each
  tested against the einsum reference: ``RelativeAttentionCPU`` (CPU training, a custom backward),
  SDPA with the shifted bias (training elsewhere), ``_relative_inference`` (no autograd);
- a decoding step over a ring of W slots (``step``): scores against the W distances, gathered by
  each slot's distance to the query.

Rotary positions (``attention="rotary"``; Su et al. 2021, RoFormer) rotate the first r dimensions of
each query and key by angles proportional to its position in the stream, in pairs (dimension i with
i + r/2, the GPT-NeoX layout), so q_i . k_j depends on i - j only: there is no position term, and the
score is a plain SDPA call over [memory; segment] that a fused kernel runs. A key is rotated once, when
it is made; the memory's keys (``keep_kv``) and the decoding ring keep them rotated. Positions are
counted in a frame that starts at the first position a call sees (or, when the memory carries its keys,
in the memory's own frame, ``Memory.offset``) and angles are computed in float64, so a long stream
loses nothing to rounding.

Masking is a function of the distance d = i - j (query and key positions in the stream) and one
per-query limit: key j is visible to query i iff 0 <= d <= limit_i. The limit is the document
position (``doc_pos``: no attention across a file start), and with ``same_length`` at most
mem_len - 1 (every query sees the same number of keys, the authors' ``same_length``).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from txl_audio.model.memory import LayerMemory


def rotary_inv_freq(dims: int, base: float, device: torch.device | None = None) -> Tensor:
    """(dims/2,) float64 rotation frequencies theta_i = base^(-2i/dims) (RoFormer, eq. 15)."""
    return base ** (-torch.arange(0, dims, 2, device=device, dtype=torch.float64) / dims)


def rotary_tables(positions: Tensor, inv_freq: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """positions (L,) int64 -> cos, sin (L, r/2) in ``dtype`` of the angles position x theta_i,
    computed in float64 (an angle at position 10^8 keeps its fraction of a radian)."""
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (..., L, Dh) rotated at the positions of cos, sin (L, r/2): dimension i pairs with i + r/2
    (x_i, x_{i+r/2}) -> (x_i cos - x_{i+r/2} sin, x_{i+r/2} cos + x_i sin); dimensions from r on pass."""
    h = cos.shape[-1]
    x1, x2, rest = x[..., :h], x[..., h : 2 * h], x[..., 2 * h :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


def sinusoid(positions: Tensor, dim: int) -> Tensor:
    """Positions (L,) -> (L, dim) embedding [sin(p w) | cos(p w)], w_k = 10000^(-2k/dim)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (L, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


# Per device type, the multiple of columns the position-score product's output rows are padded to
# (with distances that are always masked): on CUDA a row length of K + 1 (odd for the usual even K)
# misaligns the rows for the tensor-core GEMM kernels. Unpadded elsewhere.
ROW_ALIGN = {"cuda": 8}


def distance_columns(klen: int, device: torch.device) -> int:
    """Columns of the position scores for ``klen`` keys: K + 1, rounded up to ROW_ALIGN's multiple."""
    align = ROW_ALIGN.get(device.type, 1)
    return -(-(klen + 1) // align) * align


def relative_distances(
    klen: int, clamp_len: int, device: torch.device | None = None, columns: int | None = None
) -> Tensor:
    """The distances ``klen-1, ..., 1, 0, -1`` (descending, K + 1 of them, or ``columns`` >= K + 1 with
    -2, -3, ... after them) that ``rel_shift`` expects, clamped to ``clamp_len`` (distances beyond it
    share one embedding; < 0 = no clamp). The negative ones (future keys) are always masked; -1 only
    makes the shift a free view, the rest pad the rows (see CUDA_ROW_ALIGN)."""
    n = klen + 1 if columns is None else columns
    d = torch.arange(klen - 1, klen - 1 - n, -1, device=device)
    if clamp_len >= 0:
        d = d.clamp(max=clamp_len)
    return d


def rel_shift(scores: Tensor, klen: int) -> Tensor:
    """(..., T, P) scores of each query against distances K-1, ..., 0, -1, ... (P >= K + 1 columns,
    contiguous rows) -> (..., T, K) against keys, K = ``klen``.

    Query i sits at key index M + i (M = K - T), so key j is at distance M + i - j, found in column
    T - 1 - i + j. Reading the flattened rows from offset T - 1 with row length P - 1 does exactly that:
    row i starts i*P + T-1-i into the buffer. A view, no copy (the authors pad and copy instead); its
    rows do not overlap (P - 1 >= K). Entries for future keys (j > M + i + 1) read padding or the next
    row: they must be masked.
    """
    T, P = scores.shape[-2], scores.shape[-1]
    assert P >= klen + 1
    # narrow / unflatten / slice rather than one as_strided: the same view, and torch.compile's cached
    # graphs replay it correctly (an as_strided output came back with garbage sizes from a warm
    # AOTAutograd cache, torch 2.13)
    flat = scores.flatten(-2)  # (..., T*P)
    return flat.narrow(-1, T - 1, T * (P - 1)).unflatten(-1, (T, P - 1))[..., :klen]  # (..., T, K)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype matrix products give for ``x``: autocast's where it is on, else x's own. Masks and
    position biases are made in it, so nothing is converted per layer."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def sdpa_backends(device: torch.device):
    """The context SDPA runs in with a float position bias. On CUDA it is pinned to the
    memory-efficient kernel (math as the fallback): flash takes no bias, and cuDNN, which PyTorch
    prefers on Hopper, builds a graph per shape and has no gradient for a bias in every version; the
    choice is printed by benchmarks/gpu_preflight.py. Elsewhere PyTorch's own choice (the CPU flash
    kernel takes a float mask)."""
    if device.type != "cuda":
        return nullcontext()
    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def attention_mask(
    qlen: int,
    klen: int,
    limit: Tensor | int | None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Additive mask (0 visible, -inf hidden) for ``qlen`` queries that are the last of ``klen`` keys,
    or with ``dtype=torch.bool`` a boolean one (True visible: SDPA takes it without a float bias).

    Key j is visible to query i iff 0 <= d <= limit_i with d = klen - qlen + i - j. ``limit``: None
    (causal only), an int (same for all), or (B, T) per query (then the mask is (B, 1, T, K);
    otherwise (1, 1, T, K)). Every query sees at least itself (d = 0), so no row is empty.
    """
    i = torch.arange(qlen, device=device)
    j = torch.arange(klen, device=device)
    d = (klen - qlen + i)[:, None] - j[None, :]  # (T, K)
    hidden = d < 0
    if isinstance(limit, Tensor):
        hidden = hidden | (d[None] > limit[:, :, None])  # (B, T, K)
        hidden = hidden[:, None]  # (B, 1, T, K)
    else:
        if limit is not None:
            hidden = hidden | (d > limit)
        hidden = hidden[None, None]  # (1, 1, T, K)
    if dtype == torch.bool:
        return ~hidden
    zero = torch.zeros((), device=device, dtype=dtype)
    return torch.where(hidden, torch.tensor(float("-inf"), device=device, dtype=dtype), zero)


class MultiHeadAttention(nn.Module):
    """Attention of a segment over memory + segment: relative (u, v, W_kR), rotary or absolute.

    Parameters: ``qkv`` (3*H*Dh, D) = [W_q; W_kE; W_v] without bias (as the paper writes them),
    ``out`` (D, H*Dh) without bias; relative only: ``r_net`` (H*Dh, D) = W_kR, ``u``, ``v`` (H, Dh)
    (per layer, as the authors' released models untie them). Rotary adds no parameters.
    """

    def __init__(self, d_model: int, n_head: int, d_head: int, dropatt: float, attention: str) -> None:
        super().__init__()
        relative = attention == "relative"
        self.n_head, self.d_head, self.relative = n_head, d_head, relative
        self.rotary = attention == "rotary"
        self.scale = 1.0 / math.sqrt(d_head)
        self.dropatt = dropatt
        hd = n_head * d_head
        self.qkv = nn.Linear(d_model, 3 * hd, bias=False)
        self.out = nn.Linear(hd, d_model, bias=False)
        if relative:
            self.r_net = nn.Linear(d_model, hd, bias=False)
            self.u = nn.Parameter(torch.zeros(n_head, d_head))
            self.v = nn.Parameter(torch.zeros(n_head, d_head))

    def rel_keys(self, pos_emb: Tensor) -> Tensor:
        """(R, D) sinusoids of distances -> (H, R, Dh) relative keys R W_kR."""
        r = self.r_net(pos_emb)  # (R, H*Dh)
        return r.view(-1, self.n_head, self.d_head).transpose(0, 1)  # (H, R, Dh)

    def project(
        self, x: Tensor, mem: Tensor | None = None, mem_kv: tuple[Tensor, Tensor] | None = None,
        rope: tuple[Tensor, Tensor] | None = None, cmem: Tensor | None = None,
        cmem_rope: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`_project`, with a compressed memory's keys and values (B, H, C, Dh) in front
        when ``cmem`` (B, C, D) is given (rotary: rotated by ``cmem_rope``, cos and sin (C, r/2))."""
        q, k, v = self._project(x, mem, mem_kv, rope)
        if cmem is None or cmem.shape[1] == 0:
            return q, k, v
        kc, vc = self.slot_keys_values(cmem, cmem_rope)
        return q, torch.cat([kc.to(k.dtype), k], dim=2), torch.cat([vc.to(v.dtype), v], dim=2)

    def slot_keys_values(self, slots: Tensor, rope: tuple[Tensor, Tensor] | None = None
                         ) -> tuple[Tensor, Tensor]:
        """Keys and values (B, H, C, Dh) of compressed-memory slots (B, C, D) (already normalized for
        a pre-norm layer); rotary: the keys rotated by ``rope``, cos and sin (C, r/2). The forward
        pass and the decoding cache's compression both use this."""
        B, C, _ = slots.shape
        H, Dh = self.n_head, self.d_head
        kv = F.linear(slots, self.qkv.weight[H * Dh :]).view(B, C, 2, H, Dh)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        return (k if rope is None else apply_rotary(k, *rope)), v

    def _project(
        self, x: Tensor, mem: Tensor | None = None, mem_kv: tuple[Tensor, Tensor] | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Queries for x (B, T, D); keys and values for [mem; x] (B, M+T, D). Returns q (B, T, H, Dh)
        and k, v (B, H, K, Dh). ``mem_kv``: the memory's keys and values (B, H, M, Dh) from the
        previous segment, used instead of re-projecting ``mem`` (inference with unchanged weights: the
        same result; the caller that carries them knows the weights did not change). ``rope``: rotary
        only, cos and sin (K, r/2) of the K positions; queries and the keys made here are rotated
        (the memory's carried keys were rotated when they were made)."""
        B, T, _ = x.shape
        H, Dh = self.n_head, self.d_head
        M = 0 if mem is None else mem.shape[1]
        w = self.qkv.weight
        if M == 0 or mem_kv is not None:
            qkv = self.qkv(x).view(B, T, 3, H, Dh)  # (B, T, 3, H, Dh)
            q = qkv[:, :, 0]
            k, v = qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)  # (B, H, T, Dh)
            if rope is not None:
                cos, sin = rope[0][M:], rope[1][M:]
                q = apply_rotary(q.transpose(1, 2), cos, sin).transpose(1, 2)
                k = apply_rotary(k, cos, sin)
            if M:
                if mem_kv[0].shape[2] != M:
                    raise ValueError(f"the memory holds {M} positions, its keys/values {mem_kv[0].shape[2]}")
                k = torch.cat([mem_kv[0].to(k.dtype), k], dim=2)  # (B, H, K, Dh)
                v = torch.cat([mem_kv[1].to(v.dtype), v], dim=2)
            return q, k, v
        q = F.linear(x, w[: H * Dh]).view(B, T, H, Dh)  # (B, T, H, Dh)
        # keys and values of the memory are re-projected with the current weights (the paper's
        # recurrence: memory is hidden states, gradients reach W_kE and W_v through it)
        kv = F.linear(torch.cat([mem, x], dim=1), w[H * Dh :]).view(B, M + T, 2, H, Dh)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
        if rope is not None:
            q = apply_rotary(q.transpose(1, 2), rope[0][M:], rope[1][M:]).transpose(1, 2)
            k = apply_rotary(k, *rope)
        return q, k, v

    def attend(self, q: Tensor, kh: Tensor, vh: Tensor, rel_k: Tensor | None, mask: Tensor | None,
               crel: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """q (B, T, H, Dh); kh, vh (B, H, K, Dh) for keys at consecutive positions ending at the last
        query; rel_k (H, P, Dh) for distances K-1, ..., -1, ... (relative; P = distance_columns(K));
        mask additive (B|1, 1, T, K) in the compute dtype, or
        None where causality needs no mask: T == 1 (one query over its whole context), or absolute
        attention with T == K (SDPA's is_causal). With a compressed memory the first C keys are its
        slots (the mask covers them too) and, relative only, ``crel`` = (relative keys (H, N, Dh) of a
        table of N distances, index (T, C) of each query-slot distance in it). Returns (B, T, H*Dh)."""
        B, T = q.shape[:2]
        qh = q.transpose(1, 2)  # (B, H, T, Dh)
        p = self.dropatt if self.training else 0.0
        if self.relative:
            assert rel_k is not None
            # the 1/sqrt(Dh) scale is folded into the queries so (b)+(d) is scaled once, here
            qu = (qh + self.u.to(qh.dtype)[:, None]) * self.scale  # (B, H, T, Dh)
            qv = (qh + self.v.to(qh.dtype)[:, None]) * self.scale
            rel_t = rel_k.transpose(-1, -2)  # (H, Dh, P): P >= K+1 distances, see distance_columns
            K = kh.shape[2]
            needs_grad = torch.is_grad_enabled() and (qh.requires_grad or rel_k.requires_grad)
            if crel is not None:  # compressed slots first: their position scores gathered from a table
                C = crel[1].shape[1]
                by_dist = torch.matmul(qv, crel[0].transpose(-1, -2))  # (B, H, T, N)
                bias_c = by_dist.gather(-1, crel[1].expand(B, by_dist.shape[1], T, C))  # (B, H, T, C)
                bias = torch.cat([bias_c, rel_shift(torch.matmul(qv, rel_t), K - C)], dim=-1) + mask
                o = F.scaled_dot_product_attention(qu, kh, vh, attn_mask=bias.to(qu.dtype), dropout_p=p,
                                                   scale=1.0)
            elif needs_grad and p == 0.0 and qh.device.type == "cpu" and not torch.compiler.is_compiling():
                o = RelativeAttentionCPU.apply(qu, qv, kh, vh, rel_t[..., : K + 1], mask)
            elif needs_grad:
                bias = rel_shift(torch.matmul(qv, rel_t), K)  # (B, H, T, K), a view
                bias = bias + mask if mask is not None else bias.contiguous()  # a fresh tensor
                o = F.scaled_dot_product_attention(
                    qu, kh, vh, attn_mask=bias.to(qu.dtype), dropout_p=p, scale=1.0
                )
            else:
                o = _relative_inference(qu, qv, kh, vh, rel_t, mask, p)
        elif self.rotary:
            o = _plain_attention(qh, kh, vh, mask, p)
        else:
            causal_only = mask is None and T == kh.shape[2]
            o = F.scaled_dot_product_attention(
                qh,
                kh,
                vh,
                attn_mask=None if causal_only or mask is None else mask.to(qh.dtype),
                dropout_p=p,
                is_causal=causal_only,
            )
        return o.transpose(1, 2).reshape(B, T, -1)  # (B, T, H*Dh)

    def forward(
        self,
        x: Tensor,
        mem: Tensor | None,
        rel_k: Tensor | None,
        mask: Tensor | None,
        mem_kv: tuple[Tensor, Tensor] | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        cmem: Tensor | None = None,
        cmem_rope: tuple[Tensor, Tensor] | None = None,
        crel: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D), mem (B, M, D) or None -> output (B, T, D) (before dropout and residual) and
        the keys and values of all K positions (B, H, K, Dh) (rotary: the keys rotated), after the
        compressed memory's when ``cmem`` (B, C, D) is given (see project and attend)."""
        q, k, v = self.project(x, mem, mem_kv, rope, cmem, cmem_rope)
        return self.out(self.attend(q, k, v, rel_k, mask, crel)), k, v

    def step(self, x: Tensor, ring: LayerMemory, slots: Tensor, rel_k: Tensor | None, dist: Tensor,
             mask: Tensor, rope: tuple[Tensor, Tensor] | None = None,
             crel: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Decoding over a ring of W slots: x (B, n, D) are the tokens at the positions whose slots are
        ``slots`` (n,); their keys and values are written into ``ring.keys`` / ``ring.values``
        (B, H, W, Dh), then each attends to every slot. ``dist`` (n, W): distance from each query to
        each slot's position, clamped to 0 .. W-1 (hidden slots are masked anyway); ``rel_k``
        (H, W, Dh): relative keys of the distances 0 .. W-1; ``mask`` (n, W) additive, in the query's
        dtype. Static shapes for a given n and no host synchronisation (a CUDA graph can capture it).
        Returns (B, n, D) before dropout and residual.

        The position score of query i and slot s is (q_i + v) r_{dist[i, s]}: scores against the W
        distances (one product per head), then gathered by slot."""
        B, n, _ = x.shape
        H, Dh = self.n_head, self.d_head
        W = dist.shape[1]
        qkv = self.qkv(x).view(B, n, 3, H, Dh).transpose(1, 3)  # (B, H, 3, n, Dh)
        keys, values = ring.keys, ring.values  # (B, H, W, Dh)
        q, k = qkv[:, :, 0], qkv[:, :, 1]
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        # (casts are no-ops unless run under autocast with float32 buffers)
        keys.index_copy_(2, slots, k.to(keys.dtype))
        values.index_copy_(2, slots, qkv[:, :, 2].to(values.dtype))
        q = q.to(keys.dtype)  # (B, H, n, Dh)
        if not self.relative:
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask.to(q.dtype))
        else:
            qu = (q + self.u.to(q.dtype)[:, None]) * self.scale  # (B, H, n, Dh)
            qv = (q + self.v.to(q.dtype)[:, None]) * self.scale
            # one product per head over the batch's queries: (H, B*n, Dh) x (H, Dh, W)
            by_dist = torch.matmul(qv.transpose(0, 1).reshape(H, B * n, Dh), rel_k.transpose(1, 2))
            by_dist = by_dist.view(H, B, n, W).transpose(0, 1)  # (B, H, n, W)
            bias = by_dist.gather(-1, dist.expand(B, H, n, W))  # (B, H, n, W), by slot
            if crel is not None:
                C = crel[1].shape[1]
                by_c = torch.matmul(qv.transpose(0, 1).reshape(H, B * n, Dh), crel[0].transpose(1, 2))
                by_c = by_c.view(H, B, n, -1).transpose(0, 1)  # (B, H, n, X)
                bias = torch.cat([by_c.gather(-1, crel[1].expand(B, H, n, C)), bias], dim=-1)
            bias = bias + mask
            o = F.scaled_dot_product_attention(qu, keys, values, attn_mask=bias.to(q.dtype), scale=1.0)
        return self.out(o.transpose(1, 2).reshape(B, n, H * Dh))  # (B, n, D)


# Without autograd the (B, H, T, K) position scores can take the mask in place, and on CPU they are
# made a few batch rows at a time: fresh large buffers cost page faults (the allocator returns
# blocks over ~32 MB to the system), while a few MB are recycled from the heap.
_CPU_CHUNK_ELEMENTS = 1 << 21


# Queries per block in CPU inference (0 = one block); see _relative_inference.
CPU_QUERY_BLOCK = 256

# Devices whose SDPA kernels read a float mask at any storage offset: there the position scores take
# the mask in place (no fresh (B, H, T, K) tensor); elsewhere (CUDA) the bias is made fresh.
IN_PLACE_BIAS_DEVICES = ("cpu",)


def _relative_inference(
    qu: Tensor, qv: Tensor, kh: Tensor, vh: Tensor, rel_t: Tensor, mask: Tensor | None, p: float
) -> Tensor:
    """Relative attention without autograd: qu, qv (B, H, T, Dh), kh, vh (B, H, K, Dh), rel_t
    (H, Dh, P) for distances K-1, ..., -1 (and padding) -> (B, H, T, Dh).

    On CPU the queries go in blocks of CPU_QUERY_BLOCK: a block ending at query q1 sees no key past
    M + q1 (causality; the other limits only hide more), so it is the same problem with K' = M + q1
    keys, the last K' + 1 distances of rel_t and the block's rows of the mask. That skips part of the
    segment's future half: an eighth of the scores with two blocks at tgt_len = mem_len (exact: a
    skipped key had weight exp(-inf) = 0). Smaller blocks skip more but cost more calls (measured:
    256 is as fast as 128 or 192 at tgt_len 512, and 7.7% faster than one block)."""
    B, H, T = qu.shape[:3]
    K = kh.shape[2]
    n = CPU_QUERY_BLOCK
    if qu.device.type == "cpu" and mask is not None and n and T >= 2 * n:
        M = K - T
        outs = []
        for q0 in range(0, T, n):
            q1 = min(T, q0 + n)
            k1 = M + q1  # keys 0 .. k1-1: all this block's queries can see
            rows = slice(q0, q1)
            outs.append(_relative_inference_rows(
                qu[:, :, rows], qv[:, :, rows], kh[:, :, :k1], vh[:, :, :k1], rel_t[..., K - k1 : K + 1],
                mask[:, :, rows, :k1], p))
        return torch.cat(outs, dim=2)
    return _relative_inference_rows(qu, qv, kh, vh, rel_t, mask, p)


def _relative_inference_rows(
    qu: Tensor, qv: Tensor, kh: Tensor, vh: Tensor, rel_t: Tensor, mask: Tensor | None, p: float
) -> Tensor:
    """_relative_inference for all queries at once, a few batch rows at a time on CPU."""
    B, H, T = qu.shape[:3]
    K = kh.shape[2]
    in_place = qu.device.type in IN_PLACE_BIAS_DEVICES
    step = B if qu.device.type != "cpu" else _cpu_rows(B, H, T, K)
    outs = []
    for b in range(0, B, step):
        rows = slice(b, b + step)
        bias = rel_shift(torch.matmul(qv[rows], rel_t), K)  # (b, H, T, K), a view
        m = None if mask is None else (mask if mask.shape[0] == 1 else mask[rows])
        if in_place:
            if m is not None:
                bias.add_(m)
        else:
            # a fresh tensor: the view starts T - 1 elements into its buffer, and the CUDA kernels check
            # a mask's strides but not its start ("attn_bias_ptr is not correctly aligned" in bf16,
            # misaligned 16-byte loads in fp32); and in the queries' dtype (bf16 weights: no float32 mask)
            bias = (bias if m is None else bias + m).contiguous().to(qu.dtype)
        outs.append(
            F.scaled_dot_product_attention(
                qu[rows], kh[rows], vh[rows], attn_mask=bias, dropout_p=p, scale=1.0
            )
        )
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _cpu_rows(B: int, H: int, T: int, K: int) -> int:
    return max(1, _CPU_CHUNK_ELEMENTS // (H * T * (K + 1)))


def _plain_attention(qh: Tensor, kh: Tensor, vh: Tensor, mask: Tensor | None, p: float) -> Tensor:
    """Attention without a position term (rotary): qh (B, H, T, Dh) over kh, vh (B, H, K, Dh) at
    consecutive positions ending at the last query. ``mask``: boolean (B|1, 1, T, K) (True visible),
    or None for causality alone, which goes in as is_causal (T == K), no mask (T == 1), or else on
    CUDA as the lower-right causal bias that the flash kernel runs without any mask tensor (elsewhere
    as a boolean mask: PyTorch would materialize that bias as a float one). In CPU inference the
    queries go in blocks of CPU_QUERY_BLOCK that skip the keys no query of the block can see, as
    _relative_inference does."""
    T, K = qh.shape[2], kh.shape[2]
    if mask is None:
        if T == K:
            return F.scaled_dot_product_attention(qh, kh, vh, dropout_p=p, is_causal=True)
        if T == 1:
            return F.scaled_dot_product_attention(qh, kh, vh, dropout_p=p)
        if qh.device.type == "cuda":
            # imported here: torch.nn.attention.bias pulls in torch's compiler (0.75 s at start-up)
            from torch.nn.attention.bias import causal_lower_right

            return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=causal_lower_right(T, K), dropout_p=p)
        mask = attention_mask(T, K, None, qh.device, dtype=torch.bool)
    n = CPU_QUERY_BLOCK
    if qh.device.type == "cpu" and not torch.is_grad_enabled() and n and T >= 2 * n:
        M = K - T
        outs = []
        for q0 in range(0, T, n):
            q1 = min(T, q0 + n)
            k1 = M + q1  # keys 0 .. k1-1: all this block's queries can see
            outs.append(F.scaled_dot_product_attention(qh[:, :, q0:q1], kh[:, :, :k1], vh[:, :, :k1],
                                                       attn_mask=mask[:, :, q0:q1, :k1], dropout_p=p))
        return torch.cat(outs, dim=2)
    return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, dropout_p=p)


class RelativeAttentionCPU(torch.autograd.Function):
    """Relative attention for training on CPU with few, reused (T, K)-sized buffers.

    Autograd through SDPA with a float mask that needs a gradient takes PyTorch's math path, which
    materializes scores, probabilities, their gradients and the shift's padding: about eight fresh
    (B, H, T, K) tensors per layer, and on CPU each fresh buffer costs page faults as well as memory
    traffic. Here the forward pass is the fused flash kernel with the position scores as its mask,
    keeping only its output and log-sum-exp; the backward pass recomputes position scores and
    probabilities a few batch rows at a time in three buffers reused across rows, and writes the
    position-score gradient into the position-score buffer (the inverse of the relative shift).

    qu = (q + u)/sqrt(Dh), qv = (q + v)/sqrt(Dh) (B, H, T, Dh); k, v (B, H, K, Dh); rel_t (H, Dh, K+1)
    relative keys for distances K-1..-1; mask additive (B|1, 1, T, K) or None (T == 1 only).
    """

    @staticmethod
    def _position_scores(qv, rel_t, mask, rows, buf):
        """buf (b, H, T, K+1) <- qv[rows] rel_t; returns its shifted view (b, H, T, K) + mask."""
        torch.matmul(qv[rows], rel_t, out=buf)
        bias = rel_shift(buf, buf.shape[-1] - 1)  # (b, H, T, K), a view of buf
        if mask is not None:
            bias.add_(mask if mask.shape[0] == 1 else mask[rows])
        return bias

    @staticmethod
    def forward(ctx, qu, qv, k, v, rel_t, mask):  # type: ignore[override]
        B, H, T, K = qu.shape[0], qu.shape[1], qu.shape[2], k.shape[2]
        assert rel_t.shape[-1] == K + 1, "the CPU path has unpadded distance rows"
        step = _cpu_rows(B, H, T, K)
        buf = qu.new_empty(min(step, B), H, T, K + 1)
        outs, lses = [], []
        for b in range(0, B, step):
            rows = slice(b, b + step)
            n = min(step, B - b)
            bias = RelativeAttentionCPU._position_scores(qv, rel_t, mask, rows, buf[:n])
            o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                qu[rows], k[rows], v[rows], 0.0, False, attn_mask=bias, scale=1.0
            )
            outs.append(o)
            lses.append(lse)
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        lse = lses[0] if len(lses) == 1 else torch.cat(lses)
        ctx.save_for_backward(qu, qv, k, v, rel_t, out, lse)
        ctx.mask = mask
        return out

    @staticmethod
    def backward(ctx, d_out):  # type: ignore[override]
        qu, qv, k, v, rel_t, out, lse = ctx.saved_tensors
        mask = ctx.mask
        B, H, T, K = qu.shape[0], qu.shape[1], qu.shape[2], k.shape[2]
        d_out = d_out.contiguous()
        # contiguous, so that the per-row results are written in place (empty_like keeps views' strides)
        d_qu, d_qv, d_k, d_v = (t.new_empty(t.shape) for t in (qu, qv, k, v))
        d_rel = torch.zeros_like(rel_t)  # (H, Dh, K+1)
        delta = (d_out * out).sum(-1, keepdim=True)  # (B, H, T, 1) = rowsum(dP * P)
        step = _cpu_rows(B, H, T, K)
        m = min(step, B)
        raw_buf, p_buf, ds_buf = (
            qu.new_empty(m, H, T, K + 1),
            qu.new_empty(m, H, T, K),
            qu.new_empty(m, H, T, K),
        )
        for b in range(0, B, step):
            rows = slice(b, b + step)
            n = min(step, B - b)
            raw, p, ds = raw_buf[:n], p_buf[:n], ds_buf[:n]
            bias = RelativeAttentionCPU._position_scores(qv, rel_t, mask, rows, raw)
            torch.matmul(qu[rows], k[rows].transpose(-1, -2), out=p)
            p.add_(bias).sub_(lse[rows].unsqueeze(-1)).exp_()  # probabilities (0 where masked)
            torch.matmul(p.transpose(-1, -2), d_out[rows], out=d_v[rows])
            torch.matmul(d_out[rows], v[rows].transpose(-1, -2), out=ds)  # dP
            ds.sub_(delta[rows]).mul_(p)  # dS = P * (dP - delta): gradient of the scores
            torch.matmul(ds, k[rows], out=d_qu[rows])
            torch.matmul(ds.transpose(-1, -2), qu[rows], out=d_k[rows])
            bias.copy_(ds)  # the position scores' gradient, in raw's layout (masked entries are 0)
            flat = raw.flatten(-2)
            flat[..., : T - 1] = 0  # the entries rel_shift never reads
            flat[..., T - 1 + T * K :] = 0
            torch.matmul(raw, rel_t.transpose(-1, -2), out=d_qv[rows])
            d_rel += torch.matmul(qv[rows].transpose(-1, -2), raw).sum(0)
        return d_qu, d_qv, d_k, d_v, d_rel, None
