"""Output distributions over 16-bit audio, the linear-prediction prior, and 16-bit input embeddings.

The 8-bit (and text) model predicts with a softmax over its vocabulary (``TransformerXL._output``).
For 16-bit PCM (65,536 levels, offset binary: token = int16 value + 32,768) a 65,536-way softmax is
slow and data-hungry; these heads factor it instead:

- :class:`DualSoftmaxHead` (``model.head = "dual_softmax"``): WaveRNN's split (Kalchbrenner et al. 2018,
  section 3): p(x) = p(c | h) p(f | h, c) with c the high byte (coarse) and f the low byte (fine); the
  fine distribution sees c through an embedding (teacher-forced in training, sampled first in
  generation);
- :class:`LogisticMixtureHead` (``"logistic_mixture"``): a discretized mixture of logistics over the
  65,536 levels (PixelCNN++, Salimans et al. 2017, section 2.1; used for 16-bit audio in Parallel
  WaveNet, van den Oord et al. 2018), the edge levels taking the tails as in PixelCNN++;
- :class:`LinearPredictor` (``model.lp_order = P > 0``): a causal linear prediction from the last P
  samples, its coefficients predicted by the network from h, which the head is centred on (the
  logistics' means are the prediction plus the network's offsets; the dual softmax models the
  residual against the rounded prediction, modulo 2^16), so the network learns a correction and a
  scale, as FLAC, Shorten and MPEG-4 ALS code a linear prediction's residual. The coefficients are
  also trained by a Laplace likelihood of the sample around the prediction (``aux``), which gives
  them a gradient where rounding does not (the dual softmax).

Every head: ``params(h, shift_or_prior) -> tuple of tensors`` (what a decoding step hands out: fixed
shapes, so a CUDA graph can return it), ``log_prob(params, tokens)``, ``log_probs(params)`` over all
65,536 levels, ``sample(params, generator)`` (an exact draw at temperature 1), and, from
``log_probs``, the CDF the lossless codec needs (:func:`cdf`). Losses are nats per 16-bit sample.

Shape letters: N positions, D d_model, K mixture components, V = 65,536 levels, P prior order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEVELS = 65_536
HALF = 32_768  # offset binary: token = int16 value + HALF; value in [-1, 1) = (token - HALF) / HALF
HALF_BIN = 1.0 / (2 * HALF)  # half the distance between two levels in [-1, 1) units
LOG_SCALE_MIN = -14.0  # logistic scales below e^-14 (2.5% of a level) are clamped


def level_values(tokens: Tensor) -> Tensor:
    """Tokens (offset binary) -> float values in [-1, 1)."""
    return (tokens.to(torch.float32) - HALF) / HALF


class ByteEmbedding(nn.Module):
    """A 16-bit sample's input embedding: the sum of its high byte's and its low byte's vectors, so
    the input sees both bytes with 2 x 256 vectors instead of 65,536."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.hi = nn.Embedding(256, d_model)
        self.lo = nn.Embedding(256, d_model)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.hi(tokens >> 8) + self.lo(tokens & 255)


def _exp_draw(log_p: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row of ``log_p (..., n)`` with probability softmax(log_p): argmax(p / E),
    E ~ Exp(1) (as generate.draw): exact, on the device, reproducible with ``generator``."""
    p = torch.softmax(log_p.float(), dim=-1)
    e = torch.empty_like(p).exponential_(1.0, generator=generator)
    return (p / e.clamp_min_(1e-30)).argmax(dim=-1)


class DualSoftmaxHead(nn.Module):
    """Coarse (high byte) and fine (low byte) softmaxes. ``params``: (h (N, D), shift (N,) int64): the
    modelled symbol is r = (token - shift) mod 2^16 (shift 0 without the prior), r = 2^15 + the residual
    against the prior's prediction. While sampling with the prior's loop open on the corpus's fixed
    predictor (:func:`txl_audio.generate.open_loop_prior`) a third entry, ``unit`` (N,) float64 (the
    anchored residual level, mean |residual| in levels), makes :meth:`sample` draw in units of it."""

    def __init__(self, d_model: int, d_fine: int | None = None) -> None:
        super().__init__()
        d_fine = d_fine or d_model
        self.coarse = nn.Linear(d_model, 256)
        self.fine_in = nn.Linear(d_model, d_fine)
        self.coarse_emb = nn.Embedding(256, d_fine)
        self.fine = nn.Linear(d_fine, 256)
        self.level = nn.Parameter(torch.zeros(d_model))  # how the prior's residual level enters h

    def params(self, h: Tensor, shift: Tensor | None, level: Tensor | None = None,
               unit: Tensor | None = None) -> tuple[Tensor, ...]:
        """``shift``: the rounded prediction (int64) the residual is taken against; ``level`` (N,): the
        log of the prior's recent residual magnitude, added to h along a learned direction; ``unit``
        (N,): the open loop's residual level to draw in (see :meth:`sample`), None otherwise."""
        if shift is None:
            shift = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        if level is not None:
            h = h + level[:, None].to(h.dtype) * self.level
        return (h, shift) if unit is None else (h, shift, unit)

    def _fine_logits(self, h: Tensor, coarse: Tensor) -> Tensor:
        """h (N, D), coarse (N,) or (N, C) -> fine logits (N, 256) or (N, C, 256)."""
        a = self.fine_in(h)  # (N, d_fine)
        e = self.coarse_emb(coarse)  # (N, d_fine) or (N, C, d_fine)
        if e.dim() == 3:
            a = a[:, None]
        return self.fine(F.relu(a + e))

    def log_prob(self, params: tuple[Tensor, ...], tokens: Tensor) -> Tensor:
        h, shift = params[:2]
        r = torch.remainder(tokens - shift, LEVELS)
        c, f = r >> 8, r & 255
        lc = torch.log_softmax(self.coarse(h).float(), -1).gather(-1, c[:, None])[:, 0]
        lf = torch.log_softmax(self._fine_logits(h, c).float(), -1).gather(-1, f[:, None])[:, 0]
        return lc + lf

    def _log_probs_by_symbol(self, h: Tensor, lc: Tensor) -> Tensor:
        """h (N, D) and its coarse log-probabilities lc (N, 256) -> log p of every symbol r = 256 c + f
        (N, 65,536): each coarse byte's fine distribution."""
        N = h.shape[0]
        every = torch.arange(256, device=h.device).expand(N, 256)
        lf = torch.log_softmax(self._fine_logits(h, every).float(), -1)  # (N, 256 coarse, 256 fine)
        return (lc[:, :, None] + lf).reshape(N, LEVELS)

    def log_probs(self, params: tuple[Tensor, ...]) -> Tensor:
        h, shift = params[:2]
        by_r = self._log_probs_by_symbol(h, torch.log_softmax(self.coarse(h).float(), -1))
        x = torch.arange(LEVELS, device=h.device)
        return by_r.gather(1, torch.remainder(x[None, :] - shift[:, None], LEVELS))  # in order of tokens

    # the lossless codec codes a sample as two symbols of 256: the coarse byte of the modelled symbol,
    # then its fine byte given the coarse one (float64 probabilities)
    def symbol(self, params: tuple[Tensor, Tensor], tokens: Tensor) -> Tensor:
        """The 16-bit symbol the two bytes are taken from: the residual r against the shift."""
        return torch.remainder(tokens - params[1], LEVELS)

    def token(self, params: tuple[Tensor, Tensor], symbol: Tensor) -> Tensor:
        return torch.remainder(symbol + params[1], LEVELS)

    def coarse_probs(self, params: tuple[Tensor, Tensor]) -> Tensor:
        return torch.softmax(self.coarse(params[0]).double(), -1)

    def fine_probs(self, params: tuple[Tensor, Tensor], coarse: Tensor) -> Tensor:
        return torch.softmax(self._fine_logits(params[0], coarse).double(), -1)

    def sample(self, params: tuple[Tensor, ...], generator: torch.Generator | None = None) -> Tensor:
        """One token per row, exactly from the distribution; with ``unit`` (the open loop, issue 28)
        the drawn residual e is rescaled to units of the anchored level: e x unit / E|e|, E|e| the
        distribution's own mean magnitude, added to the fixed prediction and kept in the 16-bit range.
        Why: the head draws residuals in absolute levels, and a small model spreads its mass thinly
        over all 65,536 of them; fed its own coloured draws, those tails set the level (-9 dBFS on the
        300-step test model); the mixture heads draw in units of the level by construction."""
        h, shift = params[:2]
        lc = torch.log_softmax(self.coarse(h).float(), -1)
        c = _exp_draw(lc, generator)
        f = _exp_draw(torch.log_softmax(self._fine_logits(h, c).float(), -1), generator)
        if len(params) == 2:
            return torch.remainder(c * 256 + f + shift, LEVELS)
        unit = params[2].double()
        e = (c * 256 + f - HALF).double()  # the residual against the prediction
        x = shift.double() + torch.round(e * unit / self._mean_magnitude(h, lc))
        return x.clamp(-HALF, HALF - 1).long() + HALF

    def _mean_magnitude(self, h: Tensor, lc: Tensor) -> Tensor:
        """E|r - 2^15| under the distribution (N,) float64, every one of the 65,536 levels counted."""
        p = torch.exp(self._log_probs_by_symbol(h, lc)).double()
        mag = (torch.arange(LEVELS, device=h.device, dtype=torch.float64) - HALF).abs()
        return (p * mag).sum(-1).clamp_min(1e-3)


def _log_expm1(d: Tensor) -> Tensor:
    """log(exp(d) - 1) for d > 0 without overflow."""
    big = d > 20.0
    small = torch.log(torch.expm1(torch.where(big, torch.ones_like(d), d)))
    return torch.where(big, d + torch.log1p(-torch.exp(-d.clamp_min(20.0))), small)


class LogisticMixtureHead(nn.Module):
    """K logistics: weights pi, means mu (offsets from the prior when there is one), log scales;
    ``params``: (mix (N, 3K) float32 = [logit pi | mu | log s], ) with the prior already in mu."""

    def __init__(self, d_model: int, components: int) -> None:
        super().__init__()
        self.K = components
        self.proj = nn.Linear(d_model, 3 * components)

    def reset_parameters(self) -> None:
        """Called after the model's generic initialisation: every component starts at the prediction
        (or at 0) with scales spread from e^-8 (11 levels) to e^-2 (a seventh of full scale), so the
        mixture covers silence and loud speech from the first step."""
        with torch.no_grad():
            # every position starts with the same mixture: a mean offset of 0.02 (what a 0.02-std
            # projection of a unit-norm state gives) would already be hundreds of levels
            self.proj.weight.zero_()
            self.proj.bias.zero_()
            self.proj.bias[2 * self.K :] = torch.linspace(-8.0, -2.0, self.K)

    def centre_scales(self) -> None:
        """With a residual level (the fitted prior), scales are relative to it: spread around it."""
        with torch.no_grad():
            self.proj.bias[2 * self.K :] = torch.linspace(-3.0, 2.0, self.K)

    def params(self, h: Tensor, prior: Tensor | None, level: Tensor | None = None) -> tuple[Tensor]:
        """``prior`` (N,): the prediction the means are offsets from; ``level`` (N,): the log of the
        prior's recent residual magnitude, which the offsets and scales are measured in (an offset of
        1 is one typical residual: a step of the optimizer moves a mean by a fraction of that, not by a
        fraction of full scale)."""
        mix = self.proj(h).float()  # (N, 3K)
        logit_pi, mu, log_s = mix.split(self.K, dim=-1)
        if level is not None:
            mu = mu * torch.exp(level.float())[:, None]
            log_s = log_s + level.float()[:, None]
        if prior is not None:
            mu = mu + prior.float()[:, None]
        return (torch.cat([logit_pi, mu, log_s.clamp(min=LOG_SCALE_MIN)], dim=-1),)

    def _component_log_probs(self, mix: Tensor, x: Tensor, k: Tensor) -> Tensor:
        """mix (N, 3K); x (N, L) level values; k (N, L) tokens -> (N, L, K) log P(level | component)."""
        logit_pi, mu, log_s = mix.split(self.K, dim=-1)
        inv_s = torch.exp(-log_s)[:, None, :]  # (N, 1, K)
        c = x[..., None] - mu[:, None, :]  # (N, L, K)
        a = inv_s * (c + HALF_BIN)  # upper edge
        b = inv_s * (c - HALF_BIN)  # lower edge
        # log(sigmoid(a) - sigmoid(b)) = b + log(expm1(a - b)) - softplus(a) - softplus(b): exact and
        # stable for the narrow 16-bit bins, where PixelCNN++'s difference of two sigmoids cancels
        mid = b + _log_expm1(a - b) - F.softplus(a) - F.softplus(b)
        lo_edge = -F.softplus(-a)  # log sigmoid(a): level 0 takes everything below its upper edge
        hi_edge = -F.softplus(b)  # log(1 - sigmoid(b)): level V-1 takes everything above its lower edge
        k = k[..., None]
        return torch.where(k == 0, lo_edge, torch.where(k == LEVELS - 1, hi_edge, mid))

    def _mixture_log_probs(self, mix: Tensor, k: Tensor) -> Tensor:
        """In float64: a 16-bit bin is 3e-5 wide, and a float32 difference x - mu off by 6e-8 moves a
        narrow logistic's tail by percents (the cost is small: one level per position in training)."""
        mix = mix.double()
        log_pi = torch.log_softmax(mix[:, : self.K], dim=-1)[:, None, :]  # (N, 1, K)
        x = (k.double() - HALF) / HALF
        return torch.logsumexp(log_pi + self._component_log_probs(mix, x, k), dim=-1).float()

    def log_prob(self, params: tuple[Tensor], tokens: Tensor) -> Tensor:
        return self._mixture_log_probs(params[0], tokens[:, None])[:, 0]

    def log_probs(self, params: tuple[Tensor]) -> Tensor:
        mix = params[0]
        k = torch.arange(LEVELS, device=mix.device).expand(mix.shape[0], LEVELS)
        return self._mixture_log_probs(mix, k)

    # the lossless codec's two symbols of 256: the high byte of the level, then its low byte
    def symbol(self, params: tuple[Tensor], tokens: Tensor) -> Tensor:
        return tokens

    def token(self, params: tuple[Tensor], symbol: Tensor) -> Tensor:
        return symbol

    def coarse_probs(self, params: tuple[Tensor]) -> Tensor:
        """P(high byte = c) (N, 256) float64: the mixture's CDF at the 257 edges of the 256-level bins
        (everything below the range in bin 0, above it in bin 255)."""
        mix = params[0].double()
        logit_pi, mu, log_s = mix.split(self.K, dim=-1)
        edges = (torch.arange(1, 256, device=mix.device, dtype=torch.float64) * 256 - HALF - 0.5) / HALF
        z = (edges[None, :, None] - mu[:, None, :]) * torch.exp(-log_s)[:, None, :]  # (N, 255, K)
        inf = torch.full_like(z[:, :1], float("inf"))
        lower, upper = torch.cat([-inf, z], dim=1), torch.cat([z, inf], dim=1)  # (N, 256, K) bin edges
        # each component's mass in each bin, as a difference of its CDF below its median and of its
        # survival function above it: 1 - 1e-17 is 1 in float64, so a CDF difference in the upper tail
        # would give a bin a sample lands in (a loud file, far above the prediction) probability 0
        mass = torch.where(lower > 0, torch.sigmoid(-lower) - torch.sigmoid(-upper),
                           torch.sigmoid(upper) - torch.sigmoid(lower))
        return (mass * torch.softmax(logit_pi, -1)[:, None, :]).sum(-1).clamp_min(0.0)

    def fine_probs(self, params: tuple[Tensor], coarse: Tensor) -> Tensor:
        """P(low byte = f | high byte = c) (N, 256) float64: the 256 levels of bin c, normalised."""
        k = coarse[:, None] * 256 + torch.arange(256, device=coarse.device)[None, :]
        return torch.softmax(self._mixture_log_probs(params[0], k).double(), -1)

    def sample(self, params: tuple[Tensor], generator: torch.Generator | None = None) -> Tensor:
        """A component by its weight, a logistic draw from it, rounded to the nearest level (the tails
        clamped to the edge levels): exactly the discretized mixture's probabilities."""
        mix = params[0]
        logit_pi, mu, log_s = mix.split(self.K, dim=-1)
        j = _exp_draw(logit_pi, generator)[:, None]  # (N, 1)
        u = torch.rand(mix.shape[0], 1, device=mix.device, generator=generator).clamp_(1e-7, 1 - 1e-7)
        x = mu.gather(1, j) + torch.exp(log_s.gather(1, j)) * (torch.log(u) - torch.log1p(-u))
        return (torch.round(x[:, 0].double() * HALF).clamp(-HALF, HALF - 1) + HALF).long()


# The causally fitted prior's schedule: the baselines' backward-adaptive LPC (baselines.lpc_predictions)
LPC_BLOCK, LPC_WINDOW = 64, 512


@dataclass(frozen=True)
class PriorState:
    """What the linear-prediction prior carries from one call to the next, per stream: the last tokens
    read (B, <= keep), the fitted coefficients of the block in progress (B, P) float64 (fitted prior
    only), and how many tokens the stream has read (B,) (positions when no doc_pos is given)."""

    history: Tensor
    coef: Tensor | None
    seen: Tensor
    resid: Tensor | None = None  # (B, <= 16) the last known residual magnitudes of the fitted prediction
    pending: Tensor | None = None  # (B,) the fitted prediction of the next call's first token


LEVEL_SPAN = 16  # residuals averaged for the level (the baselines' adaptive Laplace averages ~16)
OPEN_SCALE_SHIFT = 8  # the level's rate while sampling with a long-term predictor: 1/256 (16 ms) ...
OPEN_LEAK_SHIFT = 12  # ... and its pull toward the corpus's level: 1/4096 (0.26 s)


class LinearPredictor(nn.Module):
    """The linear-prediction prior: pred_t = sum_i a_i x_{t-i}, i = 0 .. P-1 (x_t is the input sample,
    the one before the target), with coefficients a = base + W h:

    - ``fitted=False``: base a learned constant, starting at "the next sample equals this one";
    - ``fitted=True``: base fitted causally, exactly as the baselines' backward-adaptive LPC: for each
      block of 64 targets, order-P autocorrelation LPC on the 512 samples before it (Hann window,
      Levinson-Durbin in float64), so the network starts from a classical predictor and learns a
      correction W h (starting near 0).

    A Laplace scale b(h) gives the auxiliary likelihood that trains the coefficients."""

    open_loop = False  # set while sampling (txl_audio.generate.open_loop_prior), never saved
    # the training corpus's long-term-spectrum predictor (coefficients (order,), the residual level in
    # int16 levels to start at), set by txl_audio.checkpoint.load_model from the checkpoint's corpus
    # figures: with the loop open, the fixed predictor (None: predict 0)
    long_term: tuple[np.ndarray, float] | None = None

    def __init__(self, d_model: int, order: int, fitted: bool = False) -> None:
        super().__init__()
        self.order, self.fitted = order, fitted
        self.keep = max(LPC_WINDOW, order - 1) if fitted else order - 1  # tokens carried
        self.coef = nn.Linear(d_model, order)
        self.scale = nn.Linear(d_model, 1)

    def reset_parameters(self) -> None:
        """Called after the model's generic initialisation: the coefficients start as the base alone."""
        with torch.no_grad():
            # no correction at first: a coefficient off by 0.002 already moves a prediction by hundreds
            # of levels, far more than a predictable sample's residual
            self.coef.weight.zero_()
            self.coef.bias.zero_()
            if not self.fitted:
                self.coef.bias[0] = 1.0
            # the Laplace scale: 1% of full scale, or (fitted) the recent residual level itself
            self.scale.bias.fill_(math.log(math.expm1(1.0 if self.fitted else 0.01)))

    def level_span(self) -> int:
        """The level's state per stream: the last 16 residuals, or while sampling with a long-term
        predictor one running mean."""
        return 1 if self.open_loop and self.long_term is not None else LEVEL_SPAN

    def context(self, tokens: Tensor, state: PriorState | None, doc_pos: Tensor | None,
                dense: bool = False) -> tuple[PriorInputs, PriorState]:
        """tokens (B, T); ``state`` from the previous call (None at a stream's start); ``doc_pos``
        (B, T) the tokens' positions in their files (None: positions in the stream). Returns the
        prior's inputs for every position (windows, and with a fitted prior its base coefficients and
        residual level) and the next state. ``dense``: fit at every position, then keep the block
        starts' (no data-dependent shapes: a CUDA graph can capture it)."""
        B, T = tokens.shape
        dev = tokens.device
        if state is None:
            state = PriorState(torch.zeros(B, 0, dtype=torch.long, device=dev), None,
                               torch.zeros(B, dtype=torch.long, device=dev))
        pos = doc_pos if doc_pos is not None else state.seen[:, None] + torch.arange(T, device=dev)
        H = state.history.shape[1]
        ctx = torch.cat([state.history, tokens], dim=1)  # (B, H+T)
        vals = (ctx.double() - HALF) / HALF
        windows = _windows(vals, H, self.order, pos)
        keep = ctx[:, ctx.shape[1] - min(self.keep, ctx.shape[1]) :]
        if not self.fitted:
            return PriorInputs(windows), PriorState(keep, None, state.seen + T)
        if self.open_loop and self.long_term is not None:
            # the training corpus's long-term predictor, and a slower level of what it leaves
            a, start = self.long_term
            base = torch.as_tensor(np.asarray(a), dtype=torch.float64, device=dev).expand(B, T, -1)
            level, resid, pending = _open_level(vals[:, H:], windows, base, pos, state, float(start))
        else:
            if self.open_loop:  # predicting 0: the level is that of the signal itself
                base = torch.zeros(B, T, self.order, dtype=torch.float64, device=dev)
            else:
                base = _fitted_coefficients(vals, H, pos, state.coef, self.order, dense)
            level, resid, pending = _residual_level(vals[:, H:], windows, base, pos, state)
        return (PriorInputs(windows, base, level),
                PriorState(keep, base[:, -1], state.seen + T, resid, pending))

    def forward(self, h: Tensor, windows: Tensor, base: Tensor | None = None,
                level: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """h (N, D), windows (N, P) float64, base (N, P) float64 or None, level (N,) or None ->
        prediction (N,) float32 clamped to the 16-bit range, and the Laplace log scale (N,) (relative
        to the residual level when there is one)."""
        if self.open_loop:  # a sampler's open loop: the fixed predictor alone, or 0
            if self.long_term is None or base is None:
                pred = torch.zeros(h.shape[0], dtype=torch.float32, device=h.device)
            else:
                pred = (base * windows).sum(-1).clamp(-1.0, 1.0 - 1.0 / HALF).float()
        else:
            a = self.coef(h).double()
            if base is not None:
                a = a + base
            pred = (a * windows).sum(-1).clamp(-1.0, 1.0 - 1.0 / HALF).float()
        log_b = torch.log(F.softplus(self.scale(h).float()[:, 0]) + 1e-6)
        if level is not None:
            log_b = log_b + level.float()
        return pred, log_b

    @staticmethod
    def laplace_nll(pred: Tensor, log_b: Tensor, tokens: Tensor) -> Tensor:
        """-log of the Laplace density at the target, in nats per level (density in [-1, 1) units
        times the level width 1/32,768): comparable with the head's loss, trains the coefficients."""
        err = (level_values(tokens) - pred).abs()
        return err * torch.exp(-log_b) + log_b + math.log(2.0) + math.log(HALF)


@dataclass(frozen=True)
class PriorInputs:
    """The prior's inputs for a call's positions (B, T, ...): windows of past values, and with a fitted
    prior its base coefficients and the log of its recent residual magnitude (``level``, (B, T))."""

    windows: Tensor
    base: Tensor | None = None
    level: Tensor | None = None


def _input_residuals(x: Tensor, windows: Tensor, base: Tensor, state: PriorState) -> tuple[Tensor, Tensor]:
    """The prediction ``base`` x ``windows`` at every position, rounded and clipped as the baselines'
    LPC (B, T), and |x_t - its prediction| for every input x_t (B, T; known at t, the first from the
    previous call's pending prediction)."""
    B = x.shape[0]
    pred = torch.round((base * windows).sum(-1) * HALF).clamp(-HALF, HALF - 1)
    xi = torch.round(x * HALF)  # integer values of the inputs
    prev_pred = state.pending if state.pending is not None else torch.zeros(B, dtype=x.dtype, device=x.device)
    preds = torch.cat([prev_pred[:, None], pred[:, :-1]], dim=1)  # the prediction of each input, (B, T)
    return pred, (xi - preds).abs()


def _residual_level(x: Tensor, windows: Tensor, base: Tensor, pos: Tensor,
                    state: PriorState) -> tuple[Tensor, Tensor, Tensor]:
    """The fitted prediction's recent residual magnitude at every position: the mean |x_{j+1} - pred_j|
    (integer units) over the last 16 targets j+1 <= t of the same file, log of (mean + 1) relative to
    full scale, so a head's scale can follow it as the baselines' adaptive Laplace scale does (16 before
    any residual exists). x (B, T) the call's input values; returns level (B, T) float32, the last 16
    known residuals and the prediction of the next call's first token."""
    B, T = x.shape
    dev = x.device
    pred, m = _input_residuals(x, windows, base, state)  # m: residual of target index pos_t (input t)
    old = state.resid if state.resid is not None else torch.zeros(B, 0, dtype=x.dtype, device=dev)
    R = torch.cat([old, m], dim=1)  # (B, O+T): residual of the input at call position r - O
    O = old.shape[1]
    Rp = F.pad(R, (LEVEL_SPAN - 1, 0))
    win = Rp.unfold(1, LEVEL_SPAN, 1)[:, O:]  # (B, T, 16): residuals of inputs t-15 .. t
    i = torch.arange(LEVEL_SPAN - 1, -1, -1, device=dev)  # how far back each entry is
    # a residual belongs to the file (its input is x_1 or later of the file) and exists in the buffer
    valid = (i <= pos[..., None] - 1) & (i <= O + torch.arange(T, device=dev)[None, :, None])
    count = valid.sum(-1)
    mean = torch.where(count > 0, (win * valid).sum(-1) / count.clamp(min=1), torch.full_like(x, 16.0))
    level = (torch.log(mean + 1.0) - math.log(HALF)).float()
    return level, R[:, R.shape[1] - min(LEVEL_SPAN, R.shape[1]) :], pred[:, -1]


def _open_level(x: Tensor, windows: Tensor, base: Tensor, pos: Tensor, state: PriorState,
                start: float) -> tuple[Tensor, Tensor, Tensor]:
    """The open loop's level with a long-term predictor (``base`` its coefficients): the running mean
    of |x_t - pred_t| at rate 2^-8, pulled toward ``start`` (levels) at rate 2^-12, ``start`` at a
    file's first sample, as the cascade's open loop (:mod:`txl_audio.model.cascade_prior`). Returns
    the level (B, T) as :func:`_residual_level` does, the running mean (B, 1) and the next call's
    first prediction."""
    B, T = x.shape
    pred, m = _input_residuals(x, windows, base, state)
    s = state.resid[:, 0] if state.resid is not None and state.resid.shape[1] == 1 else \
        torch.full((B,), start, dtype=x.dtype, device=x.device)
    rate, pull = 2.0 ** -OPEN_SCALE_SHIFT, 2.0 ** -OPEN_LEAK_SHIFT
    out = []
    for t in range(T):
        s = torch.where(pos[:, t] == 0, start, s + rate * (m[:, t] - s) + pull * (start - s))
        out.append(s)
    mean = torch.stack(out, dim=1)
    level = (torch.log(mean + 1.0) - math.log(HALF)).float()
    return level, s[:, None], pred[:, -1]


def _windows(vals: Tensor, H: int, order: int, pos: Tensor) -> Tensor:
    """vals (B, H+T) -> (B, T, order): x_t, x_{t-1}, ... for each of the last T, 0 where i > pos."""
    T = vals.shape[1] - H
    pad = max(0, order - 1 - H)
    v = F.pad(vals, (pad, 0)) if pad else vals
    start = v.shape[1] - T - (order - 1)
    win = v[:, start:].unfold(1, order, 1).flip(-1)  # (B, T, order)
    i = torch.arange(order, device=vals.device)
    return torch.where(i <= pos[..., None], win, 0.0)


def _fitted_coefficients(vals: Tensor, H: int, pos: Tensor, carried: Tensor | None, order: int,
                         dense: bool) -> Tensor:
    """(B, T, P) float64 coefficients for every position (see LinearPredictor): the target of position
    t is sample s = pos_t + 1 of its file; its block starts at s0 = s - s mod 64, at position
    t0 = t - s mod 64 of this call. Block 0 (no past) has none; a block that starts here is fitted on
    the 512 samples before s0 (ending with this position's input); one that started earlier carries on."""
    B, HT = vals.shape
    T = HT - H
    dev = vals.device
    s = pos + 1
    into = torch.remainder(s, LPC_BLOCK)
    t0 = torch.arange(T, device=dev) - into  # (B, T)
    first = (into == 0) & (s > 0)  # a block starts at this position
    out = torch.zeros(B, T, order, dtype=torch.float64, device=dev)
    rows = torch.arange(B * T, device=dev) if dense else first.flatten().nonzero()[:, 0]
    if rows.numel():
        b, t = rows // T, rows % T
        n_avail = s.flatten()[rows].clamp(max=LPC_WINDOW)
        # the window of samples s0-512 .. s0-1 = ctx positions H+t-511 .. H+t (zero-padded in front)
        padded = F.pad(vals, (LPC_WINDOW, 0))  # (B, W + H + T)
        idx = (H + t + 1)[:, None] + torch.arange(LPC_WINDOW, device=dev)[None, :]
        fitted = _levinson_fit(padded[b[:, None], idx], n_avail, order)  # (n, P)
        fitted = torch.where(first.flatten()[rows][:, None], fitted, 0.0)  # dense: block starts only
        out.view(B * T, order)[rows] = fitted
    # each position takes its block's coefficients: fitted here, carried from the last call, or none
    here = out.gather(1, t0.clamp(min=0)[..., None].expand(B, T, order))
    before = carried[:, None, :].expand(B, T, order) if carried is not None else torch.zeros_like(out)
    coef = torch.where((t0 >= 0)[..., None], here, before)
    return torch.where((s - into > 0)[..., None], coef, 0.0)  # block 0: no prediction


def _levinson_fit(past: Tensor, n_avail: Tensor, order: int) -> Tensor:
    """past (n, W) float64, the last n_avail entries of each row valid -> (n, order) LPC coefficients
    by the autocorrelation method, as baselines.lpc_predictions: Hann window over the valid samples,
    order p = min(order, n_avail / 4), the Toeplitz system solved for p coefficients (order 1 with
    coefficient 1 when p = 0 or the past is silent)."""
    n, W = past.shape
    j = torch.arange(W, device=past.device)
    k = j[None, :] - (W - n_avail[:, None])  # index within the valid samples
    hann = 0.5 - 0.5 * torch.cos(2 * math.pi * (k + 1).double() / (n_avail[:, None] + 1).double())
    w = torch.where(k >= 0, past * hann, 0.0)
    lags = torch.stack([(w[:, : W - q] * w[:, q:]).sum(-1) for q in range(order + 1)], dim=-1)  # (n, P+1)
    lags[:, 0] = lags[:, 0] * (1.0 + 1e-9) + 1e-9 / HALF**2  # the baseline's 1e-9 in integer units
    p = (n_avail // 4).clamp(max=order)  # (n,)
    i = torch.arange(order, device=past.device)
    R = lags[:, (i[:, None] - i[None, :]).abs()]  # (n, P, P) Toeplitz
    inside = (i[:, None] < p[:, None, None]) & (i[None, :] < p[:, None, None])
    eye = torch.eye(order, dtype=past.dtype, device=past.device)
    R = torch.where(inside, R, eye)  # unknowns past p: identity rows, 0 on the right
    rhs = torch.where(i[None, :] < p[:, None], lags[:, 1:], 0.0)
    a, _ = torch.linalg.solve_ex(R, rhs)  # no host sync (solve would check for singularity)
    silent = (p < 1) | (past.abs().amax(-1) == 0)
    order1 = torch.zeros_like(a)
    order1[:, 0] = 1.0
    return torch.where(silent[:, None], order1, a)


def cdf(log_probs: Tensor) -> Tensor:
    """(N, V) log-probabilities -> (N, V + 1) float64 CDF: 0, P(x < 1), ..., 1 (the last entry exact)."""
    p = torch.exp(log_probs.double())
    c = torch.cumsum(p, dim=-1)
    c = c / c[:, -1:]
    return torch.cat([torch.zeros_like(c[:, :1]), c], dim=-1)
