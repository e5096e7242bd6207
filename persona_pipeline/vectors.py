"""Persona vectors, persona space and projections: linear algebra on activations.

- ``mean_diff``: mean(positive) − mean(negative) per layer, over judge-filtered pairs.
- ``svd_direction``: the top right-singular vector of the paired differences, its
  sign aligned with the mean difference (the persona-steering seed's SVD vectors).
- ``pca``: PCA of standardised per-role means; the Assistant Axis is
  mean(default) − mean(other roles), compared with PC1 by cosine.
"""

from __future__ import annotations

import torch


def keep_pair(pos_trait: float | None, neg_trait: float | None, pos_coh: float | None, neg_coh: float | None,
              threshold: float = 50.0, coherence: float = 50.0) -> bool:
    """The persona-vectors filter: positive expresses the trait, negative does not, both coherent."""
    vals = (pos_trait, neg_trait, pos_coh, neg_coh)
    if any(v is None for v in vals):
        return False
    return pos_trait >= threshold and neg_trait < threshold and pos_coh >= coherence and neg_coh >= coherence


def mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """[n, layers, hidden] × 2 → [layers, hidden]."""
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("mean_diff needs at least one positive and one negative sample (none passed the filter?)")
    return pos.float().mean(0) - neg.float().mean(0)


def svd_direction(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Unit [layers, hidden]: per layer, the top singular direction of paired differences."""
    diffs = (pos.float() - neg.float())  # [n, L, h]
    md = diffs.mean(0)
    out = []
    for layer in range(diffs.shape[1]):
        _, _, vh = torch.linalg.svd(diffs[:, layer, :], full_matrices=False)
        v = vh[0]
        out.append(v if torch.dot(v, md[layer]) >= 0 else -v)
    return torch.stack(out)


def project(acts: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """a·v/‖v‖ for every row of ``acts`` [..., hidden]."""
    return acts.float() @ (vector.float() / vector.float().norm())


def cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    unit = vectors.float() / vectors.float().norm(dim=-1, keepdim=True)
    return unit @ unit.T


def span_share(vector: torch.Tensor, others: torch.Tensor) -> float:
    """Fraction of ``vector``'s squared norm inside the span of ``others`` [k, hidden] (linearity view)."""
    if len(others) == 0:
        return 0.0
    q, _ = torch.linalg.qr(others.float().T)
    inside = q @ (q.T @ vector.float())
    return float(inside.norm() ** 2 / vector.float().norm() ** 2)


def pca(means: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardise [n, hidden] per dimension, then PCA: (components [k, h], explained ratio [k], mu, sigma)."""
    mu, sigma = means.mean(0), means.std(0).clamp_min(1e-6)
    z = (means - mu) / sigma
    _, s, vh = torch.linalg.svd(z, full_matrices=False)
    var = s**2
    k = min(k, vh.shape[0])
    return vh[:k], (var / var.sum())[:k], mu, sigma


def assistant_axis(default_mean: torch.Tensor, role_means: torch.Tensor) -> torch.Tensor:
    return default_mean.float() - role_means.float().mean(0)
