"""Compressive memory (Rae et al. 2020, "Compressive Transformers for Long-Range Sequence Modelling",
ICLR): states leaving a Transformer-XL's memory are compressed, ``cmem_ratio`` (c) of them into one
slot, into a second memory of ``cmem_len`` slots; attention reads [compressed memory; memory; segment].

Shape letters: B = batch, n = groups of c states, D = d_model, H = heads, Dh = head size.

Conventions (the model's forward pass and the decoding cache follow the same ones, so both compress
the same states into the same slots):

- A slot summarises c consecutive stream positions p .. p + c - 1 with p a multiple of c (mem_len and
  tgt_len must be multiples of c, so states leave the memory in whole groups). Its position, for
  relative distances and rotary angles, is the centroid p + (c - 1) / 2 of what it summarises: the
  distance from a query is then the mean distance of the states it replaces, which keeps the
  positions' meaning (a slot 1,000 samples back is seen as 1,000 samples back) rather than numbering
  slots as if they were consecutive positions.
- What is compressed is each layer's input at those positions (what the memory holds); keys and values
  are projected from the compressed states by the layer, as for the memory.
- The compressed memory carries no gradient (like the memory). The compression function is trained
  only by the attention-reconstruction loss (:func:`reconstruction_loss`): the layer's content
  attention of the current segment over the states being compressed against over their compression,
  with the layer's weights and the states stopped, so only the compression network learns from it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Compressor(nn.Module):
    """One layer's compression: (B, n*c, D) -> (B, n, D). ``fn``: "mean" (average of each group of
    c, no parameters) or "conv" (a 1-D convolution of kernel and stride c over the D channels,
    initialised to the mean)."""

    def __init__(self, d_model: int, ratio: int, fn: str) -> None:
        super().__init__()
        self.ratio, self.fn = ratio, fn
        self.conv = nn.Conv1d(d_model, d_model, ratio, stride=ratio) if fn == "conv" else None

    def reset_parameters(self) -> None:
        if self.conv is not None:  # start as mean pooling: identity per channel, 1/c per tap
            with torch.no_grad():
                self.conv.weight.zero_()
                idx = torch.arange(self.conv.weight.shape[0])
                self.conv.weight[idx, idx, :] = 1.0 / self.ratio
                self.conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        c = self.ratio
        if N % c:
            raise ValueError(f"compression takes whole groups of {c} states, got {N}")
        if self.conv is None:
            return x.view(B, N // c, c, D).mean(2)
        return self.conv(x.transpose(1, 2).to(self.conv.weight.dtype)).transpose(1, 2)  # (B, n, D)


def reconstruction_loss(layer: nn.Module, h: Tensor, old: Tensor, new: Tensor) -> Tensor:
    """The attention-reconstruction loss of one layer (Rae et al. 2020, section 3.1): the mean squared
    difference between the layer's content attention of the segment's states ``h`` (B, T, D) over the
    states being compressed ``old`` (B, N, D) and over their compression ``new`` (B, N/c, D). The
    layer's weights, ``h`` and ``old`` are taken as constants: the gradient reaches ``new`` only."""
    attn = layer.attn
    H, Dh = attn.n_head, attn.d_head
    w = attn.qkv.weight.detach()
    if layer.pre_norm:
        ln = layer.attn_norm

        def norm(x: Tensor) -> Tensor:
            return F.layer_norm(x, ln.normalized_shape, ln.weight.detach(), ln.bias.detach(), ln.eps)
    else:
        def norm(x: Tensor) -> Tensor:
            return x

    B, T, _ = h.shape
    q = F.linear(norm(h.detach()), w[: H * Dh]).view(B, T, H, Dh).transpose(1, 2)

    def attend(x: Tensor) -> Tensor:
        kv = F.linear(norm(x), w[H * Dh :]).view(B, x.shape[1], 2, H, Dh)
        return F.scaled_dot_product_attention(q, kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2))

    return F.mse_loss(attend(new).float(), attend(old.detach()).float())
