"""Adaptive input embeddings and adaptive softmax for large word vocabularies.

- ``AdaptiveEmbedding``: Baevski & Auli 2019, "Adaptive Input Representations for Neural Language
  Modeling". The vocabulary (sorted by frequency) is cut into clusters at ``cutoffs``; cluster ``i``
  gets embeddings of size ``d_embed // div_val**i`` projected up to ``d_proj``. Outputs are scaled by
  sqrt(d_proj) as the Transformer-XL code does.
- ``ProjectedAdaptiveLogSoftmax``: Grave et al. 2017, "Efficient softmax approximation for GPUs".
  The head scores the first cluster's words plus one logit per tail cluster; a word in tail cluster
  ``i`` has log p(w) = log p_head(cluster i) + log p_i(w | cluster i). Each cluster has its own
  projection from ``d_proj`` to its embedding size, and the word weights and projections can be tied
  with an ``AdaptiveEmbedding`` of the same shape (Dai et al. 2019 tie both on WikiText-103).

With ``cutoffs = []`` there is a single cluster and both reduce to a plain embedding / full softmax.

Shape letters: N = tokens (batch and time flattened), V = vocabulary, D = d_proj (the model width),
E_i = embedding size of cluster i, C = number of clusters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def cluster_bounds(vocab_size: int, cutoffs: list[int]) -> list[int]:
    """[0, c_1, ..., c_k, V]: cluster i covers token ids [bounds[i], bounds[i+1])."""
    cutoffs = [int(c) for c in cutoffs]
    if any(b <= a for a, b in zip(cutoffs, cutoffs[1:])) or (cutoffs and not 0 < cutoffs[0]):
        raise ValueError(f"model.cutoffs must be strictly increasing positive token ids, got {cutoffs}")
    if cutoffs and cutoffs[-1] >= vocab_size:
        raise ValueError(
            f"model.cutoffs {cutoffs} must all be below model.vocab_size={vocab_size} "
            "(the last cluster runs from the last cutoff to the vocabulary's end)"
        )
    return [0, *cutoffs, vocab_size]


def _new_weights(bounds: list[int], dims: list[int], init_std: float) -> nn.ParameterList:
    """One (V_i, E_i) matrix per cluster."""
    return nn.ParameterList(
        nn.Parameter(torch.randn(hi - lo, e) * init_std) for lo, hi, e in zip(bounds, bounds[1:], dims)
    )


def _new_projs(dims: list[int], d_proj: int, init_std: float) -> nn.ParameterDict:
    """(d_proj, E_i) projections for the clusters whose size differs from the model width."""
    return nn.ParameterDict(
        {str(i): nn.Parameter(torch.randn(d_proj, e) * init_std) for i, e in enumerate(dims) if e != d_proj}
    )


def cluster_dims(d_embed: int, n_clusters: int, div_val: int) -> list[int]:
    """Embedding size of each cluster: d_embed // div_val**i (at least 1)."""
    if div_val < 1:
        raise ValueError(f"model.div_val must be >= 1, got {div_val}")
    return [max(1, d_embed // div_val**i) for i in range(n_clusters)]


class AdaptiveEmbedding(nn.Module):
    """Token ids (any shape) -> (..., d_proj) embeddings, scaled by sqrt(d_proj).

    Parameters: ``weights[i]`` (V_i, E_i) per cluster and, where E_i != d_proj, ``projs[str(i)]``
    (d_proj, E_i) mapping the cluster's embedding up to the model width.
    """

    def __init__(
        self,
        vocab_size: int,
        d_embed: int,
        d_proj: int,
        cutoffs: list[int] | None = None,
        div_val: int = 1,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.d_proj = d_proj
        self.bounds = cluster_bounds(vocab_size, list(cutoffs or []))
        self.dims = cluster_dims(d_embed, len(self.bounds) - 1, div_val)
        self.scale = math.sqrt(d_proj)
        self.weights = _new_weights(self.bounds, self.dims, init_std)
        self.projs = _new_projs(self.dims, d_proj, init_std)

    def proj(self, i: int) -> torch.Tensor | None:
        return self.projs[str(i)] if str(i) in self.projs else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if len(self.weights) == 1:
            out = F.embedding(tokens, self.weights[0])
            p = self.proj(0)
            if p is not None:
                out = F.linear(out, p)
            return out * self.scale
        flat = tokens.reshape(-1)  # (N,)
        out = torch.zeros(flat.shape[0], self.d_proj, dtype=self.weights[0].dtype, device=flat.device)
        for i, (lo, hi) in enumerate(zip(self.bounds, self.bounds[1:])):
            # an empty cluster still runs (on 0 rows): every parameter gets a (zero) gradient, which
            # DistributedDataParallel requires of all parameters in every step
            idx = ((flat >= lo) & (flat < hi)).nonzero(as_tuple=True)[0]
            e = F.embedding(flat[idx] - lo, self.weights[i])  # (n_i, E_i)
            p = self.proj(i)
            e = F.linear(e, p) if p is not None else e
            out.index_copy_(0, idx, e.to(out.dtype))  # under autocast F.linear gives bf16
        return out.view(*tokens.shape, self.d_proj) * self.scale


class ProjectedAdaptiveLogSoftmax(nn.Module):
    """Adaptive softmax over ``vocab_size`` words from hidden states of width ``d_proj``.

    ``log_prob(hidden (N, D)) -> (N, V)`` gives the full log-distribution; ``nll(hidden, targets)``
    gives per-token negative log-likelihood in nats without building the tail clusters' logits for
    tokens that are not in them (targets < 0, e.g. -100, get loss 0).

    ``embedding``: an ``AdaptiveEmbedding`` of the same vocabulary/cutoffs/dims to tie with;
    ``tie_weights`` shares its word vectors, ``tie_projs`` its projections (same Parameter objects).
    """

    def __init__(
        self,
        vocab_size: int,
        d_embed: int,
        d_proj: int,
        cutoffs: list[int] | None = None,
        div_val: int = 1,
        embedding: AdaptiveEmbedding | None = None,
        tie_weights: bool = False,
        tie_projs: bool = False,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.d_proj = d_proj
        self.bounds = cluster_bounds(vocab_size, list(cutoffs or []))
        self.dims = cluster_dims(d_embed, len(self.bounds) - 1, div_val)
        self.n_clusters = len(self.bounds) - 1
        self.shortlist = self.bounds[1]
        if (tie_weights or tie_projs) and embedding is None:
            raise ValueError("tying the adaptive softmax needs the AdaptiveEmbedding to tie with")
        if embedding is not None and (embedding.bounds != self.bounds or embedding.dims != self.dims):
            raise ValueError(
                f"cannot tie: embedding clusters {embedding.bounds}/{embedding.dims} differ from the "
                f"softmax's {self.bounds}/{self.dims}"
            )
        if tie_weights:
            self.weights = nn.ParameterList(list(embedding.weights))
        else:
            self.weights = _new_weights(self.bounds, self.dims, init_std)
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(hi - lo)) for lo, hi in zip(self.bounds, self.bounds[1:])
        )
        if tie_projs:
            self.projs = nn.ParameterDict(dict(embedding.projs.items()))
        else:
            self.projs = _new_projs(self.dims, d_proj, init_std)
        if self.n_clusters > 1:
            # one head logit per tail cluster, scored from the head cluster's projected space
            self.cluster_weight = nn.Parameter(torch.zeros(self.n_clusters - 1, self.dims[0]))
            self.cluster_bias = nn.Parameter(torch.zeros(self.n_clusters - 1))

    def _project(self, hidden: torch.Tensor, i: int) -> torch.Tensor:
        p = self.projs[str(i)] if str(i) in self.projs else None
        return hidden if p is None else hidden @ p  # (N, D) @ (D, E_i) -> (N, E_i)

    def _head_log_prob(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, shortlist + C - 1): log-probs of head words, then of each tail cluster."""
        w, b = self.weights[0], self.biases[0]
        if self.n_clusters > 1:
            w = torch.cat([w, self.cluster_weight], 0)
            b = torch.cat([b, self.cluster_bias], 0)
        logits = F.linear(self._project(hidden, 0), w, b)
        return F.log_softmax(logits.float(), dim=-1)

    def _tail_log_prob(self, hidden: torch.Tensor, i: int) -> torch.Tensor:
        """(n, V_i): log p(word | cluster i) for the rows of ``hidden``."""
        logits = F.linear(self._project(hidden, i), self.weights[i], self.biases[i])
        return F.log_softmax(logits.float(), dim=-1)

    def log_prob(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full log-probabilities (N, V) (float32)."""
        head = self._head_log_prob(hidden)
        parts = [head[:, : self.shortlist]]
        for i in range(1, self.n_clusters):
            # log p(w) = log p(cluster i) + log p(w | cluster i)
            c = self.shortlist + i - 1
            parts.append(head[:, c : c + 1] + self._tail_log_prob(hidden, i))
        return torch.cat(parts, dim=-1)

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token negative log-likelihood (N,) in nats; 0 where targets < 0."""
        if hidden.shape[0] != targets.shape[0]:
            raise ValueError(f"hidden has {hidden.shape[0]} rows but targets {targets.shape[0]}")
        head = self._head_log_prob(hidden)  # (N, shortlist + C - 1)
        out = torch.zeros(targets.shape[0], dtype=head.dtype, device=head.device)
        for i, (lo, hi) in enumerate(zip(self.bounds, self.bounds[1:])):
            idx = ((targets >= lo) & (targets < hi)).nonzero(as_tuple=True)[0]  # empty: see AdaptiveEmbedding
            t = targets[idx] - lo
            if i == 0:
                lp = head[idx].gather(1, t[:, None]).squeeze(1)
            else:
                tail = self._tail_log_prob(hidden[idx], i)  # only the rows whose target is in cluster i
                lp = head[idx, self.shortlist + i - 1] + tail.gather(1, t[:, None]).squeeze(1)
            out = out.index_put((idx,), -lp)
        return out
