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
    modelled symbol is r = (token - shift) mod 2^16 (shift 0 without the prior)."""

    def __init__(self, d_model: int, d_fine: int | None = None) -> None:
        super().__init__()
        d_fine = d_fine or d_model
        self.coarse = nn.Linear(d_model, 256)
        self.fine_in = nn.Linear(d_model, d_fine)
        self.coarse_emb = nn.Embedding(256, d_fine)
        self.fine = nn.Linear(d_fine, 256)

    def params(self, h: Tensor, shift: Tensor | None) -> tuple[Tensor, Tensor]:
        if shift is None:
            shift = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        return h, shift

    def _fine_logits(self, h: Tensor, coarse: Tensor) -> Tensor:
        """h (N, D), coarse (N,) or (N, C) -> fine logits (N, 256) or (N, C, 256)."""
        a = self.fine_in(h)  # (N, d_fine)
        e = self.coarse_emb(coarse)  # (N, d_fine) or (N, C, d_fine)
        if e.dim() == 3:
            a = a[:, None]
        return self.fine(F.relu(a + e))

    def log_prob(self, params: tuple[Tensor, Tensor], tokens: Tensor) -> Tensor:
        h, shift = params
        r = torch.remainder(tokens - shift, LEVELS)
        c, f = r >> 8, r & 255
        lc = torch.log_softmax(self.coarse(h).float(), -1).gather(-1, c[:, None])[:, 0]
        lf = torch.log_softmax(self._fine_logits(h, c).float(), -1).gather(-1, f[:, None])[:, 0]
        return lc + lf

    def log_probs(self, params: tuple[Tensor, Tensor]) -> Tensor:
        h, shift = params
        N = h.shape[0]
        lc = torch.log_softmax(self.coarse(h).float(), -1)  # (N, 256)
        every = torch.arange(256, device=h.device).expand(N, 256)
        lf = torch.log_softmax(self._fine_logits(h, every).float(), -1)  # (N, 256 coarse, 256 fine)
        by_r = (lc[:, :, None] + lf).reshape(N, LEVELS)  # (N, V) in order of r = 256 c + f
        x = torch.arange(LEVELS, device=h.device)
        return by_r.gather(1, torch.remainder(x[None, :] - shift[:, None], LEVELS))  # in order of tokens

    def sample(self, params: tuple[Tensor, Tensor], generator: torch.Generator | None = None) -> Tensor:
        h, shift = params
        c = _exp_draw(torch.log_softmax(self.coarse(h).float(), -1), generator)
        f = _exp_draw(torch.log_softmax(self._fine_logits(h, c).float(), -1), generator)
        return torch.remainder(c * 256 + f + shift, LEVELS)


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

    def params(self, h: Tensor, prior: Tensor | None) -> tuple[Tensor]:
        mix = self.proj(h).float()  # (N, 3K)
        logit_pi, mu, log_s = mix.split(self.K, dim=-1)
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

    def sample(self, params: tuple[Tensor], generator: torch.Generator | None = None) -> Tensor:
        """A component by its weight, a logistic draw from it, rounded to the nearest level (the tails
        clamped to the edge levels): exactly the discretized mixture's probabilities."""
        mix = params[0]
        logit_pi, mu, log_s = mix.split(self.K, dim=-1)
        j = _exp_draw(logit_pi, generator)[:, None]  # (N, 1)
        u = torch.rand(mix.shape[0], 1, device=mix.device, generator=generator).clamp_(1e-7, 1 - 1e-7)
        x = mu.gather(1, j) + torch.exp(log_s.gather(1, j)) * (torch.log(u) - torch.log1p(-u))
        return (torch.round(x[:, 0].double() * HALF).clamp(-HALF, HALF - 1) + HALF).long()


class LinearPredictor(nn.Module):
    """The linear-prediction prior: pred_t = sum_i a_i(h_t) x_{t-i}, i = 0 .. P-1 (x_t is the input
    sample, the one before the target), coefficients a(h) = a0 + W h (a0 learned, starting at "the
    next sample equals this one"), and a Laplace scale b(h) for the auxiliary likelihood."""

    def __init__(self, d_model: int, order: int) -> None:
        super().__init__()
        self.order = order
        self.coef = nn.Linear(d_model, order)
        self.scale = nn.Linear(d_model, 1)

    def reset_parameters(self) -> None:
        """Called after the model's generic initialisation: start as the order-1 predictor."""
        with torch.no_grad():
            self.coef.weight.mul_(0.01)
            self.coef.bias.zero_()
            self.coef.bias[0] = 1.0
            self.scale.bias.fill_(math.log(math.expm1(0.01)))  # softplus^-1(0.01): 1% of full scale

    def forward(self, h: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
        """h (N, D), history (N, P) values of x_t, x_{t-1}, ... (0 where there is no sample) ->
        prediction (N,) clamped to [-1, 1], and the Laplace log scale (N,)."""
        pred = (self.coef(h).float() * history.float()).sum(-1).clamp(-1.0, 1.0 - 1.0 / HALF)
        log_b = torch.log(F.softplus(self.scale(h).float()[:, 0]) + 1e-6)
        return pred, log_b

    @staticmethod
    def laplace_nll(pred: Tensor, log_b: Tensor, tokens: Tensor) -> Tensor:
        """-log of the Laplace density at the target, in nats per level (density in [-1, 1) units
        times the level width 1/32,768): comparable with the head's loss, trains the coefficients."""
        err = (level_values(tokens) - pred).abs()
        return err * torch.exp(-log_b) + log_b + math.log(2.0) + math.log(HALF)


def history_windows(tokens: Tensor, past: Tensor | None, order: int, limit: Tensor | int) -> Tensor:
    """The prior's inputs for every position: tokens (B, T); past (B, H) the tokens before them (H <=
    order - 1, None = none); limit (B, T) how many samples back each position may look (its position
    in its file), or an int for all. Returns (B, T, order): values of x_t, x_{t-1}, ..., 0 where
    i > limit or before the first token held."""
    B, T = tokens.shape
    ctx = tokens if past is None else torch.cat([past, tokens], dim=1)  # (B, H+T)
    H = ctx.shape[1] - T
    pad = order - 1 - H
    vals = level_values(ctx)
    if pad > 0:
        vals = F.pad(vals, (pad, 0))
    win = vals.unfold(1, order, 1).flip(-1)  # (B, T, order): x_t, x_{t-1}, ...
    i = torch.arange(order, device=tokens.device)
    lim = limit[..., None] if isinstance(limit, Tensor) else limit
    return torch.where(i <= lim, win, 0.0)


def cdf(log_probs: Tensor) -> Tensor:
    """(N, V) log-probabilities -> (N, V + 1) float64 CDF: 0, P(x < 1), ..., 1 (the last entry exact)."""
    p = torch.exp(log_probs.double())
    c = torch.cumsum(p, dim=-1)
    c = c / c[:, -1:]
    return torch.cat([torch.zeros_like(c[:, :1]), c], dim=-1)
