"""A straightforward einsum Transformer-XL, written the way the paper's authors wrote theirs: the
benchmark baseline and an independent cross-check of ``txl_audio.model.TransformerXL``.

Time-first tensors (T, B, ...) as in the authors' code; queries, keys and values projected for all
of [memory; segment]; content and position scores by einsum; the relative shift by padding a zero
column and re-viewing (a copy); masked_fill; softmax; einsum with the values.

Same parameter names and shapes as ``TransformerXL``, so ``ref.load_state_dict(model.state_dict())``
works, or ``from_model(model)``; same ``forward(tokens, mems=None, targets=None, doc_pos=None)``
returning a ``ModelOutput`` with batch-first logits (B, T, V), loss (B, T) and mems (B, M, D).
Relative attention only (the absolute baseline has no memory and needs no cross-check here).

Shape letters: T queries, K = M + T keys, B batch, H heads, Dh head size, D d_model.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from txl_audio.config import ModelConfig
from txl_audio.data import IGNORE_INDEX
from txl_audio.model import ModelOutput, TransformerXL


def _sinusoid(pos: Tensor, dim: int) -> Tensor:
    inv_freq = 1.0 / (10000 ** (torch.arange(0.0, dim, 2.0, device=pos.device) / dim))
    sinusoid_inp = torch.outer(pos.float(), inv_freq)
    return torch.cat([sinusoid_inp.sin(), sinusoid_inp.cos()], dim=-1)  # (R, D)


def _rel_shift(x: Tensor) -> Tensor:
    """x (T, K, B, H) scores against distances K-1..0 -> against keys (the authors' pad trick)."""
    zero_pad = torch.zeros((x.size(0), 1, *x.size()[2:]), device=x.device, dtype=x.dtype)
    x_padded = torch.cat([zero_pad, x], dim=1)  # (T, K+1, B, H)
    x_padded = x_padded.view(x.size(1) + 1, x.size(0), *x.size()[2:])  # (K+1, T, B, H)
    return x_padded[1:].view_as(x)


class _Attn(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.d_head = c.n_head, c.d_head
        self.qkv = nn.Linear(c.d_model, 3 * c.n_head * c.d_head, bias=False)
        self.out = nn.Linear(c.n_head * c.d_head, c.d_model, bias=False)
        self.r_net = nn.Linear(c.d_model, c.n_head * c.d_head, bias=False)
        self.u = nn.Parameter(torch.zeros(c.n_head, c.d_head))
        self.v = nn.Parameter(torch.zeros(c.n_head, c.d_head))
        self.dropatt = nn.Dropout(c.dropatt)
        self.scale = 1 / (c.d_head**0.5)


class _FF(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c.d_model, c.d_inner)
        self.fc2 = nn.Linear(c.d_inner, c.d_model)


class _Layer(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.attn = _Attn(c)
        self.attn_norm = nn.LayerNorm(c.d_model)
        self.ff = _FF(c)
        self.ff_norm = nn.LayerNorm(c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.pre_norm = c.pre_norm

    def forward(self, w: Tensor, r: Tensor, mask: Tensor, mem: Tensor | None) -> Tensor:
        """w (T, B, D), r (K, D) sinusoids of distances K-1..0, mask (T, K, B) bool, mem (M, B, D)."""
        a = self.attn
        qlen, bsz = w.size(0), w.size(1)
        cat = w if mem is None else torch.cat([mem, w], 0)  # (K, B, D)
        if self.pre_norm:
            cat = self.attn_norm(cat)
        w_heads = a.qkv(cat)  # (K, B, 3*H*Dh)
        r_head_k = a.r_net(r)  # (K, H*Dh)
        w_head_q, w_head_k, w_head_v = torch.chunk(w_heads, 3, dim=-1)
        w_head_q = w_head_q[-qlen:]
        klen = w_head_k.size(0)
        w_head_q = w_head_q.view(qlen, bsz, a.n_head, a.d_head)  # (T, B, H, Dh)
        w_head_k = w_head_k.view(klen, bsz, a.n_head, a.d_head)  # (K, B, H, Dh)
        w_head_v = w_head_v.view(klen, bsz, a.n_head, a.d_head)
        r_head_k = r_head_k.view(klen, a.n_head, a.d_head)  # (K, H, Dh)

        ac = torch.einsum("ibnd,jbnd->ijbn", w_head_q + a.u, w_head_k)  # (T, K, B, H): (a) + (c)
        bd = torch.einsum("ibnd,jnd->ijbn", w_head_q + a.v, r_head_k)  # (T, K, B, H): (b) + (d)
        bd = _rel_shift(bd)
        score = (ac + bd) * a.scale
        score = score.masked_fill(mask[:, :, :, None], -float("inf"))
        prob = a.dropatt(F.softmax(score, dim=1))
        vec = torch.einsum("ijbn,jbnd->ibnd", prob, w_head_v)  # (T, B, H, Dh)
        vec = vec.contiguous().view(qlen, bsz, a.n_head * a.d_head)
        out = self.drop(a.out(vec))
        ff = self.ff
        if self.pre_norm:
            h = w + out
            return h + self.drop(ff.fc2(self.drop(F.relu(ff.fc1(self.ff_norm(h))))))
        h = self.attn_norm(w + out)
        return self.ff_norm(h + self.drop(ff.fc2(self.drop(F.relu(ff.fc1(h))))))


class EinsumTransformerXL(nn.Module):
    """The baseline. Relative attention, memory, clamp_len, same_length, doc_pos, pre/post norm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.attention != "relative" or config.cutoffs:
            raise ValueError("the einsum reference implements relative attention with a full softmax only")
        self.config = config
        self.word_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.out = nn.Linear(config.d_model, config.vocab_size)
        if config.tie_weights:
            self.out.weight = self.word_emb.weight
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(_Layer(config) for _ in range(config.n_layer))
        self.final_norm = nn.LayerNorm(config.d_model) if config.pre_norm else nn.Identity()

    def forward(
        self,
        tokens: Tensor,
        mems: tuple[Tensor, ...] | None = None,
        targets: Tensor | None = None,
        doc_pos: Tensor | None = None,
        *,
        return_logits: bool = True,
        mem_len: int | None = None,
    ) -> ModelOutput:
        c = self.config
        mem_len = c.mem_len if mem_len is None else mem_len
        qlen = tokens.size(1)
        mlen = 0 if mems is None else mems[0].size(1)
        klen = mlen + qlen
        dev = tokens.device
        word_emb = self.word_emb(tokens.t()) * math.sqrt(c.d_model)  # (T, B, D)

        mask = torch.triu(torch.ones(qlen, klen, device=dev, dtype=torch.bool), diagonal=1 + mlen)
        if c.same_length and mem_len > 0:
            # the authors' same_length: a window of mem_len keys ending at each query
            mask_len = klen - mem_len
            mask_shift_len = qlen - mask_len if mask_len > 0 else qlen
            mask = mask | torch.tril(torch.ones(qlen, klen, device=dev, dtype=torch.bool), -mask_shift_len)
        mask = mask[:, :, None].expand(qlen, klen, tokens.size(0))  # (T, K, B)
        if doc_pos is not None:
            dist = (torch.arange(qlen, device=dev)[:, None] + mlen) - torch.arange(klen, device=dev)[None]
            mask = mask | (dist[:, :, None] > doc_pos.t()[:, None, :])

        pos_seq = torch.arange(klen - 1, -1, -1.0, device=dev)
        if c.clamp_len >= 0:
            pos_seq = pos_seq.clamp(max=c.clamp_len)
        pos_emb = self.drop(_sinusoid(pos_seq, c.d_model).to(word_emb.dtype))  # (K, D)

        core = self.drop(word_emb)
        hids = [core]
        for i, layer in enumerate(self.layers):
            mem = None if mems is None else mems[i].transpose(0, 1)  # (M, B, D)
            core = layer(core, pos_emb, mask, mem)
            hids.append(core)
        core = self.drop(self.final_norm(core))

        new_mems = []
        with torch.no_grad():
            for i, h in enumerate(hids):
                cat = h if mems is None else torch.cat([mems[i].transpose(0, 1), h], 0)
                new_mems.append(cat[max(0, cat.size(0) - mem_len) :].detach().transpose(0, 1))
        logits = self.out(core).transpose(0, 1)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).view(targets.shape)
        return ModelOutput(logits if return_logits else None, loss, tuple(new_mems))


def from_model(model: TransformerXL) -> EinsumTransformerXL:
    """An einsum copy of ``model`` with the same weights (and train/eval mode, device, dtype)."""
    p = model.word_emb.weight
    ref = EinsumTransformerXL(copy.deepcopy(model.config)).to(device=p.device, dtype=p.dtype)
    ref.load_state_dict(model.state_dict())
    return ref.train(model.training)
