"""The network's side of the cascade prior (``model.lp_coefficients = "cascade"``): the predictor
cascade of :mod:`txl_audio.model.prior` runs alongside the model on every stream, and the network
models what it leaves (issue 25):

- the 16-bit head is centred on the cascade's prediction of the next sample, and its scale is measured
  in the cascade's running residual magnitude (the logistic mixture's means are offsets from the
  prediction in units of that scale, its scales are relative to it; the dual softmax codes the
  residual against the prediction);
- the network reads, at each position t besides the sample x_t, four features of the cascade
  (:func:`features`): the residual scale for the next sample (log), how far its next prediction is from
  x_t, the error it made on x_t, and how far its least-squares stage alone would predict, each in units
  of the scale. A learned projection adds them to the input embedding, so attention over past positions
  sees the cascade's errors: what repeats in them (pitch periods, 40-200 samples back) is the
  network's to find.

The cascade's state (its float64 and int64 rows, and its pending prediction for the next position)
belongs to the stream: it is carried in ``Memory.prior`` between segments and in the decoding cache,
like the hidden states, and restarts at every file start (``doc_pos == 0``) and stream start. Its
integers are computed by the same numba kernels in training, evaluation, decoding and the codec, and
are the same on every machine.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from txl_audio.model.heads import OPEN_LEAK_SHIFT, OPEN_SCALE_SHIFT
from txl_audio.model.prior import SCALE_UNIT, CascadeConfig, CascadeStream

HALF = 32_768
N_FEATURES = 4
FEATURE_CLIP = 16  # the offsets are clipped to +-16 scales (then divided by 16: features in [-1, 1])


@dataclass(frozen=True)
class CascadeState:
    """One batch of streams' cascade: its state rows (CPU tensors: F (B, nf) float64, G (B, ng) int64),
    and ``pending`` (B, 3) int64, its prediction, scale and stage-1 prediction of each stream's next
    sample (what the next call's first position is predicted with)."""

    F: Tensor
    G: Tensor
    pending: Tensor

    def to(self, device=None) -> CascadeState:
        return self  # the cascade runs on the CPU whatever the model's device

    def state(self) -> dict:
        return {"kind": "cascade", "F": self.F.cpu(), "G": self.G.cpu(), "pending": self.pending.cpu()}

    @classmethod
    def from_state(cls, d: dict) -> CascadeState:
        return cls(d["F"], d["G"], d["pending"])


@dataclass(frozen=True)
class CascadeInputs:
    """The cascade at every position (B, T) of a call: ``pred`` its prediction of the next sample and
    ``scale`` the residual scale for it (int64, levels and 1/16 level), ``features`` (B, T, 4) the
    network's inputs (float32)."""

    pred: Tensor
    scale: Tensor
    features: Tensor

    @property
    def level(self) -> Tensor:
        """log(scale in levels / 2^15): the head's unit, relative to full scale (float32)."""
        return (torch.log(self.scale.double() / SCALE_UNIT) - math.log(HALF)).float()


def run_cascade(stream: CascadeStream, x: np.ndarray, reset: np.ndarray, pending: np.ndarray
                ) -> tuple[np.ndarray, ...]:
    """Step ``stream`` (B rows) through the samples x (B, T) (int16 values); ``reset`` (B, T): restart
    that row before its sample t (a file's first sample); ``pending`` (B, 3): each row's prediction,
    scale and stage-1 prediction of x[:, 0] made before the call. Returns, per position, the
    predictions of x_t made before it (pred_cur, scale_cur) and those of the next sample after reading
    x_t (pred, scale, stage1), each (B, T) int64, and the new pending (B, 3)."""
    B, T = x.shape
    out = np.zeros((5, B, T), dtype=np.int64)
    last = pending.astype(np.int64).copy()
    for t in range(T):
        rows = np.nonzero(reset[:, t])[0]
        if len(rows):
            stream.reset(rows)
            p, s = stream.predict(rows)
            last[rows, 0], last[rows, 1], last[rows, 2] = p, s, stream.stage1
        out[0, :, t], out[1, :, t] = last[:, 0], last[:, 1]
        stream.update(x[:, t])
        p, s = stream.predict()
        last[:, 0], last[:, 1], last[:, 2] = p, s, stream.stage1
        out[2, :, t], out[3, :, t], out[4, :, t] = p, s, stream.stage1
    return out[0], out[1], out[2], out[3], out[4], last


def features(x: Tensor, pred_cur: Tensor, scale_cur: Tensor, pred: Tensor, scale: Tensor, stage1: Tensor
             ) -> Tensor:
    """The network's four inputs from the cascade at each position (float32, (..., 4)): log2(1 + scale
    in levels) / 16, then (pred - x), (x - pred_cur) and (stage1 - pred), each in units of the scale
    (clipped to +-16) / 16. Integers in (levels; scales in 1/16 level)."""
    s = scale.double() / SCALE_UNIT
    sc = scale_cur.double() / SCALE_UNIT

    def rel(a: Tensor, unit: Tensor) -> Tensor:
        return (a.double() / unit).clamp(-FEATURE_CLIP, FEATURE_CLIP) / FEATURE_CLIP

    f = torch.stack([(torch.log2(1.0 + s)) / 16, rel(pred - x, s), rel(x - pred_cur, sc),
                     rel(stage1 - pred, s)],
                    dim=-1)
    return f.float()


class CascadePrior(nn.Module):
    """The cascade prior of a 16-bit head: the cascade's parameters and the learned projection of its
    features into the input embedding (see the module docstring)."""

    fitted = False  # (the LinearPredictor's flag, read by the model's initialisation)
    open_loop = False  # set while sampling (txl_audio.generate.open_loop_prior), never saved
    # the training corpus's long-term-spectrum predictor (coefficients (ols_order,), the residual level
    # in int16 levels to start at), set by txl_audio.checkpoint.load_model from the checkpoint's corpus
    # figures: with the loop open, the fixed predictor (None: predict 0)
    long_term: tuple[np.ndarray, float] | None = None

    def __init__(self, d_model: int, cascade_json: str) -> None:
        super().__init__()
        self.config = CascadeConfig.from_dict(json.loads(cascade_json)) if cascade_json else CascadeConfig()
        self.features = nn.Linear(N_FEATURES, d_model)

    def reset_parameters(self) -> None:
        with torch.no_grad():  # the features enter small: the network starts as the plain embedding
            nn.init.normal_(self.features.weight, 0.0, 0.02)
            self.features.bias.zero_()

    def embed(self, inputs: CascadeInputs) -> Tensor:
        return self.features(inputs.features.to(self.features.weight.device, self.features.weight.dtype))

    def _stream(self, batch: int) -> CascadeStream:
        stream = CascadeStream(batch, self.config)
        if self.open_loop:
            if self.long_term is None:
                stream.open_loop(True)
            else:
                a, level = self.long_term
                stream.open_loop(True, a, OPEN_SCALE_SHIFT, round(level * SCALE_UNIT), OPEN_LEAK_SHIFT)
        return stream

    def empty(self, batch: int) -> CascadeState:
        stream = self._stream(batch)
        stream.reset()
        p, s = stream.predict()
        pending = torch.from_numpy(np.stack([p, s, stream.stage1], axis=1).astype(np.int64))
        return CascadeState(torch.from_numpy(stream.F.copy()), torch.from_numpy(stream.G.copy()), pending)

    def context(self, tokens: Tensor, state: CascadeState | None, doc_pos: Tensor | None,
                in_place: bool = False) -> tuple[CascadeInputs, CascadeState]:
        """tokens (B, T) (offset binary); ``state`` from the previous call (None: every stream starts
        here); ``doc_pos`` (B, T) positions in the files (a 0 restarts the row there; None: positions
        in the stream, so only a new state restarts). ``in_place``: update ``state``'s tensors (a
        decoding cache) instead of returning new ones."""
        B, T = tokens.shape
        dev = tokens.device
        if state is None:
            state = self.empty(B)
        stream = self._stream(B)
        stream.F = state.F.numpy() if in_place else state.F.numpy().copy()
        stream.G = state.G.numpy() if in_place else state.G.numpy().copy()
        x = tokens.cpu().numpy().astype(np.int64) - HALF
        reset = (doc_pos == 0).cpu().numpy() if doc_pos is not None else np.zeros((B, T), dtype=bool)
        pc, sc, p, s, s1, last = run_cascade(stream, x, reset, state.pending.numpy())
        t = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
        xt = torch.from_numpy(x)
        feats = features(xt, torch.from_numpy(pc), torch.from_numpy(sc), torch.from_numpy(p),
                         torch.from_numpy(s), torch.from_numpy(s1))
        inputs = CascadeInputs(t(p), t(s), feats.to(dev))
        if in_place:
            state.pending.copy_(torch.from_numpy(last))
            return inputs, state
        return inputs, CascadeState(torch.from_numpy(stream.F), torch.from_numpy(stream.G),
                                    torch.from_numpy(last))
