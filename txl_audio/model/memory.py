"""The past a Transformer-XL attends to: one type per layer, and the two ways a stream holds it.

Shape letters: B = batch (streams), M = memory positions, D = d_model, H = heads, Dh = head size,
W = mem_len + tgt_len slots of a decoding cache.

- :class:`LayerMemory`: what one layer attends to besides the current segment: its input at M earlier
  positions of each stream (``hidden``, detached: the recurrence of Dai et al. 2019, section 3.2) and,
  optionally, the keys and values that layer made from them.
- :class:`Memory`: the per-layer memories of the last M positions, oldest first. ``model(tokens,
  mems)`` reads one and returns the next as ``out.mems``. Training, validation, evaluation and the
  reference decoder hold one per batch of streams. Keys and values are carried only when the caller
  asks (``keep_kv=True``, inference): whoever carries them owns their validity, i.e. does not change
  the weights in between (evaluation and validation loops, which run with fixed weights).
- :class:`DecodingCache`: the same per-layer type in a ring of W slots (position p in slot p mod W),
  keys and values only, for ``model.step``; ``slot_pos`` says which stream position each slot holds.
  Made by ``model.init_cache`` for the weights and lengths of that moment, updated in place by
  ``model.step``; one cache per decoding run (decoders own it).

Nothing here holds weights; the model owns the arithmetic (``TransformerXL.forward`` / ``step``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from txl_audio.config import Lengths
from txl_audio.model.heads import PriorState


@dataclass(frozen=True)
class LayerMemory:
    """One layer's past. ``hidden`` (B, M, D): the layer's input at those positions (None in a decoding
    cache, which needs only keys and values); ``keys``, ``values`` (B, H, M, Dh) or None."""

    hidden: Tensor | None
    keys: Tensor | None = None
    values: Tensor | None = None

    @property
    def has_kv(self) -> bool:
        return self.keys is not None


def update_memory(
    past: LayerMemory | None, x: Tensor, keys: Tensor | None, values: Tensor | None, mem_len: int
) -> LayerMemory:
    """The memory after a segment: the last ``mem_len`` positions of [past; segment].

    ``x`` (B, T, D): the layer's input for the segment; ``keys``/``values`` (B, H, K, Dh) of all
    K = M + T positions the layer attended to (kept only when given). Hidden states are detached:
    no gradient flows into an earlier segment."""
    T = x.shape[1]
    h = x.detach()
    if past is not None and mem_len > T and past.hidden is not None and past.hidden.shape[1]:
        h = torch.cat([past.hidden, h], dim=1)  # (B, M+T, D)
    n = min(mem_len, h.shape[1])
    h = h[:, h.shape[1] - n :]
    if keys is None:
        return LayerMemory(h)
    K = keys.shape[2]
    return LayerMemory(h, keys[:, :, K - n :], values[:, :, K - n :])


@dataclass(frozen=True)
class Memory:
    """Per-layer memories of the same M positions of each stream (oldest first), and ``prior``: what
    the linear-prediction prior of a 16-bit head carries (the last tokens read, the coefficients of the
    block in progress; None without a prior).

    ``offset``: the stream position of the first of the M positions (streams of a batch advance
    together; rotary keys are rotated at these positions, compressed slots are aligned on them).
    ``cmem``: a compressive model's compressed memory, per layer (B, C, D): compressed layer inputs,
    oldest first, slot j summarising the cmem_ratio positions from ``cmem_pos[j]`` on (None: no
    compressed memory)."""

    layers: tuple[LayerMemory, ...]
    prior: PriorState | None = None
    offset: int = 0
    cmem: tuple[Tensor, ...] | None = None
    cmem_pos: tuple[int, ...] = ()

    @property
    def length(self) -> int:
        """M: positions held."""
        h = self.layers[0].hidden
        return 0 if h is None else h.shape[1]

    @property
    def cmem_length(self) -> int:
        """C: compressed slots held."""
        return 0 if self.cmem is None else self.cmem[0].shape[1]

    def last(self, n: int) -> Memory:
        """The last ``n`` positions (all when fewer are held); the compressed memory as it is."""
        keep = min(n, self.length)
        lo = self.length - keep
        return replace(self, layers=tuple(LayerMemory(m.hidden[:, lo:],
                                                      None if m.keys is None else m.keys[:, :, lo:],
                                                      None if m.values is None else m.values[:, :, lo:])
                                          for m in self.layers), offset=self.offset + lo)

    def hidden_only(self) -> Memory:
        """The same positions without keys and values: the next forward re-projects them."""
        return replace(self, layers=tuple(LayerMemory(m.hidden) for m in self.layers))

    def append(self, other: Memory) -> Memory:
        """This memory followed by ``other``'s positions (hidden states only; ``other``'s prior state,
        the newer one; this memory's compressed memory)."""
        return replace(self, layers=tuple(LayerMemory(torch.cat([a.hidden, b.hidden], dim=1))
                                          for a, b in zip(self.layers, other.layers)), prior=other.prior)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Memory:
        """Hidden states moved / cast (keys and values dropped: they belong to the weights' dtype)."""
        p = self.prior
        if isinstance(p, PriorState):
            p = PriorState(*(None if t is None else t.to(device) for t in
                             (p.history, p.coef, p.seen, p.resid, p.pending)))
        cmem = None if self.cmem is None else tuple(c.to(device=device, dtype=dtype) for c in self.cmem)
        return replace(self, layers=tuple(LayerMemory(m.hidden.to(device=device, dtype=dtype))
                                          for m in self.layers), prior=p, cmem=cmem)

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint: the per-layer hidden states (and the prior's state, the stream
        position, the compressed memory) on the CPU."""
        p = self.prior
        if p is None or not isinstance(p, PriorState):  # none, or the cascade's (its own plain data)
            prior = None if p is None else p.state()
        else:
            prior = {k: None if getattr(p, k) is None else getattr(p, k).cpu()
                     for k in ("history", "coef", "seen", "resid", "pending")}
        return {"hidden": [m.hidden.detach().cpu() for m in self.layers],
                "prior": prior,
                "offset": self.offset,
                "cmem": None if self.cmem is None else [c.detach().cpu() for c in self.cmem],
                "cmem_pos": list(self.cmem_pos)}

    @classmethod
    def from_state(cls, state: dict[str, Any] | list[Tensor], n_layer: int) -> Memory:
        """Rebuild from :meth:`state`. A plain list of hidden states (checkpoints written before the
        prior existed) and a list of n_layer + 1 tensors (written before the last layer's output was
        dropped from the memory: nothing attends to it) load too."""
        hidden, prior = (state["hidden"], state.get("prior")) if isinstance(state, dict) else (state, None)
        if len(hidden) not in (n_layer, n_layer + 1):
            raise ValueError(f"a memory of {len(hidden)} layers does not fit a model of {n_layer} layers")
        if prior is not None and prior.get("kind") == "cascade":
            from txl_audio.model.cascade_prior import CascadeState

            prior = CascadeState.from_state(prior)
        elif prior is not None:
            prior = PriorState(prior["history"], prior["coef"], prior["seen"], prior.get("resid"),
                               prior.get("pending"))
        extra = state if isinstance(state, dict) else {}
        cmem = extra.get("cmem")
        return cls(tuple(LayerMemory(h) for h in hidden[:n_layer]), prior, int(extra.get("offset", 0)),
                   None if cmem is None else tuple(cmem), tuple(int(p) for p in extra.get("cmem_pos", ())))


@dataclass
class DecodingCache:
    """Ring buffers of keys and values for ``model.step`` (see the module docstring).

    ``layers[l].keys`` / ``.values`` (B, H, W, Dh); ``slot_pos`` (W,) the stream position in each
    slot (far in the past when empty: never visible); ``t`` the position of the next token on the
    device (so a step needs no host value: it can be captured in a CUDA graph) and ``position`` the
    same on the host (for cutting a chunk at segment boundaries); ``rel_keys`` per layer (H, W, Dh)
    the relative keys of distances 0 .. W-1, made once from the weights (relative attention only);
    ``abs_pos`` (tgt_len, D) absolute positions within a segment (absolute attention only);
    ``prior`` the linear-prediction prior's state for a 16-bit head (fixed-size buffers, updated in
    place); ``inv_freq`` the rotary frequencies (float64, rotary attention only: keys go into the ring
    rotated at their stream positions).

    A compressive model's cache also holds each layer's inputs in the ring (``layers[l].hidden``
    (B, W, D), what is compressed when positions leave), and the compressed slots in front of the ring
    in ``keys`` / ``values`` (B, H, C + W, Dh): ``cmem_pos`` (C,) the first stream position each
    summarises (far in the past when empty), ``cmem_rel`` per layer (H, X, Dh) relative keys of the
    distances x - (c-1)/2, x = 0 .. X-1 (relative attention), ``compressed_through`` the stream
    position up to which states have been compressed (host)."""

    lengths: Lengths
    layers: tuple[LayerMemory, ...]
    slot_pos: Tensor
    t: Tensor
    rel_keys: tuple[Tensor, ...] | None
    abs_pos: Tensor | None
    prior: PriorState | None = None
    position: int = 0
    inv_freq: Tensor | None = None
    cmem_pos: Tensor | None = None
    cmem_rel: tuple[Tensor, ...] | None = None
    compressed_through: int = 0

    @property
    def cmem_slots(self) -> int:
        """C: compressed slots in front of the ring (0 without a compressed memory)."""
        return 0 if self.cmem_pos is None else self.cmem_pos.shape[0]

    @property
    def slots(self) -> int:
        """W = mem_len + tgt_len."""
        return self.slot_pos.shape[0]
