"""Persona vectors, persona space and projections: linear algebra on activations.

- ``mean_diff``: mean(positive) − mean(negative) per layer, over judge-filtered pairs.
- ``svd_direction``: the top right-singular vector of the paired differences, its
  sign aligned with the mean difference (the persona-steering seed's SVD vectors).
- ``pca``: PCA of standardised per-role means; the Assistant Axis is
  mean(default) − mean(other roles), compared with PC1 by cosine.
"""

from __future__ import annotations

import re

import torch


def keep_pair(
    pos_trait: float | None,
    neg_trait: float | None,
    pos_coh: float | None,
    neg_coh: float | None,
    threshold: float = 50.0,
    coherence: float = 50.0,
) -> bool:
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
    diffs = pos.float() - neg.float()  # [n, L, h]
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


def orient_pc1(comps: torch.Tensor, coords_default: torch.Tensor, coords_roles: torch.Tensor) -> bool:
    """A PC's sign is arbitrary: flip PC1 (in place) so the default assistant sits on its positive side.

    Then the cosine between PC1 and the Assistant Axis is signed and meaningful. Returns whether it flipped.
    """
    if float(coords_default[0]) < float(coords_roles[:, 0].mean()):
        comps[0] = -comps[0]
        return True
    return False


# ------------------------------------------------- joining activations with their index


def role_filter(index: list[dict], min_score: float) -> tuple[list[bool], list[str]]:
    """Keep role rollouts judged fully in role; a role with none kept falls back to all its rollouts.

    The default assistant is never filtered: it is the reference point, whatever the judge says.
    """
    keep = [r["source"] == "role" and (r["name"] == "default" or (r["score"] or 0) >= min_score) for r in index]
    fallback = []
    for name in sorted({r["name"] for r in index if r["source"] == "role"}):
        rows = [i for i, r in enumerate(index) if r["source"] == "role" and r["name"] == name]
        if not any(keep[i] for i in rows):
            fallback.append(name)
            for i in rows:
                keep[i] = True
    return keep, fallback


def group_mean(
    acts: torch.Tensor, index: list[dict], source: str, name: str, keep: list[bool] | None = None
) -> torch.Tensor:
    rows = [i for i, r in enumerate(index) if r["source"] == source and r["name"] == name and (keep is None or keep[i])]
    if not rows:
        raise ValueError(f"no {source} activations for {name!r}")
    return acts[rows].float().mean(0)


def default_vs_roles(
    acts: torch.Tensor, index: list[dict], roles: list[str], keep: list[bool]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of the default assistant, per-role means of every other role) at one layer."""
    if "default" not in roles:
        raise ValueError("the persona space needs the 'default' role (data_assets/roles/default.yaml)")
    others = torch.stack([group_mean(acts, index, "role", r, keep) for r in roles if r != "default"])
    return group_mean(acts, index, "role", "default", keep), others


def role_space(acts: torch.Tensor, index: list[dict], pos: int, min_role_score: float, components: int) -> dict:
    """The persona space of one checkpoint's response activations [n, layers, hidden] at stored layer ``pos``:
    PCA of the standardised per-role means (PC1 oriented so the default assistant sits on its positive side),
    the Assistant Axis at every layer (``axes``) and at ``pos`` (``axis``), and PC1's cosine with it."""
    roles = sorted({r["name"] for r in index if r["source"] == "role"})
    keep, fallback = role_filter(index, min_role_score)
    means = torch.stack([group_mean(acts[:, pos], index, "role", r, keep) for r in roles])
    comps, ratio, mu, sigma = pca(means, components)
    axes = torch.stack(
        [assistant_axis(*default_vs_roles(acts[:, i], index, roles, keep)) for i in range(acts.shape[1])]
    )
    coords = ((means - mu) / sigma) @ comps.T
    d = roles.index("default")
    if orient_pc1(comps, coords[d], torch.cat([coords[:d], coords[d + 1 :]])):
        coords[:, 0] = -coords[:, 0]
    pc1_cos = float(torch.nn.functional.cosine_similarity(axes[pos] / sigma, comps[0], dim=0))
    return {
        "roles": roles,
        "keep": keep,
        "fallback": fallback,
        "pcs": comps,
        "ratio": ratio,
        "mu": mu,
        "sigma": sigma,
        "axes": axes,
        "axis": axes[pos],
        "coords": coords,
        "pc1_cos": pc1_cos,
    }


def checkpoint_projections(
    manifests: dict,
    roles: list[str],
    pos: int,
    axis: torch.Tensor,
    comps: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    keep: list[bool],
) -> list[dict]:
    """Where each checkpoint's default and role means sit on the Assistant Axis and PC1 (same texts, new weights)."""
    from .activations import load

    rows = []
    known = [k for k in ("base", "sft", "rl") if k in manifests]
    for key in known + sorted(set(manifests) - set(known)):
        tensors, index = load(manifests[key]["path"])
        acts = tensors["response_avg"][:, pos]
        default, others = default_vs_roles(acts, index, roles, keep)
        pc1 = lambda m: ((m - mu) / sigma) @ comps[0]
        rows.append(
            {
                "checkpoint": key,
                "default_on_axis": round(float(project(default, axis)), 3),
                "roles_on_axis": round(float(project(others, axis).mean()), 3),
                "default_pc1": round(float(pc1(default)), 3),
                "roles_pc1": round(float(pc1(others).mean()), 3),
            }
        )
    return rows


def finetuning_shift(manifests: dict, vectors: dict) -> list[dict]:
    """How far each checkpoint's activations moved along each trait's vector (``ControlVector``) vs base,
    on the same texts, at the middle captured layer: mean and std of the per-text projection shift."""
    from .activations import checkpoint, layer_position

    base, _, manifest = checkpoint(manifests, "base")
    rows = []
    for key in sorted(manifests):
        tensors, _, _ = checkpoint(manifests, key)
        for trait, v in sorted(vectors.items()):
            layer, pos = layer_position(manifest["layers"], None)
            vector = v.direction(layer)
            shift = project(tensors["response_avg"][:, pos], vector) - project(base["response_avg"][:, pos], vector)
            rows.append(
                {
                    "checkpoint": key,
                    "trait": trait,
                    "layer": layer,
                    "mean_shift": round(float(shift.mean()), 4),
                    "std_shift": round(float(shift.std()), 4) if len(shift) > 1 else 0.0,
                }
            )
    return rows


def trait_pairs(
    index: list[dict], trait: str, threshold: float, coherence: float, min_pairs: int, scores: dict[tuple, dict]
) -> tuple[list[int], list[int], dict]:
    """Row positions of matched (positive, negative) answers that pass the judge filter.

    When fewer than ``min_pairs`` survive (a weak local judge), every pair is
    used and ``fallback`` says so — the vector is then unfiltered, not empty.
    """
    at = {
        (r["prompt_idx"], r["question_idx"], r["sample_idx"], r["polarity"]): i
        for i, r in enumerate(index)
        if r["source"] == "trait" and r["name"] == trait
    }
    pairs = [
        (at[(i, q, s, "pos")], at[(i, q, s, "neg")], (i, q, s))
        for (i, q, s, p) in at
        if p == "pos" and (i, q, s, "neg") in at
    ]
    if not pairs:
        raise ValueError(f"trait {trait!r}: no positive/negative answer pairs in the activations")

    def kept(key) -> bool:
        p, n = scores.get((*key, "pos"), {}), scores.get((*key, "neg"), {})
        return keep_pair(
            p.get("trait_score"), n.get("trait_score"), p.get("coherence"), n.get("coherence"), threshold, coherence
        )

    good = [x for x in pairs if kept(x[2])]
    fallback = len(good) < min_pairs
    use = pairs if fallback else good
    return (
        [p for p, _, _ in use],
        [n for _, n, _ in use],
        {"pairs": len(pairs), "kept": len(good), "fallback": fallback},
    )


def vector_issues(separation: dict, pair_stats: dict) -> list[str]:
    """Why a persona vector should not be trusted: the judge cannot tell its positive answers from its
    negative ones, or too few pairs passed the filter so every pair was used."""
    issues = []
    if not separation["separates"]:
        issues.append(
            f"positive answers do not reliably score above negative ones ({separation['pos_trait']} vs {separation['neg_trait']}"
            + (f"; paired Δ 95% CI {separation['diff_ci']}" if separation.get("diff_ci") else "")
            + ")"
        )
    if pair_stats.get("fallback"):
        issues.append(f"filter kept {pair_stats['kept']}/{pair_stats['pairs']} pairs; fell back to all pairs")
    return issues


def save_tensors(path, tensors: dict[str, torch.Tensor]) -> None:
    from pathlib import Path

    from safetensors.torch import save_file

    from .storage import atomic_path

    with atomic_path(Path(path)) as tmp:
        save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(tmp))


def save_tensor_files(folder, files: dict[str, dict[str, torch.Tensor]]) -> dict[str, object]:
    """One ``<name>.safetensors`` per entry of ``files``, swapped into ``folder`` together.

    A step that writes several vector files (one per trait partition) leaves the
    old set or the new set if it fails or is killed, never some of each; files of
    names not in ``files`` (other partitions) are kept. Returns ``{name: path}``.
    """
    from pathlib import Path

    from safetensors.torch import save_file

    from .storage import update_folder

    def writer(tensors):
        return lambda path: save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(path))

    paths = update_folder(Path(folder), {f"{name}.safetensors": writer(t) for name, t in files.items()})
    return {name: paths[f"{name}.safetensors"] for name in files}


def load_tensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


class VectorError(ValueError):
    """A steering-vector name that is malformed, leaves the artifacts folder, or names an unreadable file."""


_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


def _vector_location(root, name: str):
    """(file, tensor key) for a vector *name*; ``VectorError`` for anything that is not a plain name."""
    from .layout import layout

    trait, _, kind = name.partition(":")
    if trait == "assistant_axis" and not kind:
        return layout(root).assistant_axis, "axis"
    if trait == "persona" and _NAME_PART.fullmatch(kind):
        return layout(root).cmaes_vector(kind), "vector"
    if _NAME_PART.fullmatch(trait) and kind in ("", "svd"):
        key = "svd_response_avg" if kind == "svd" else "mean_diff_response_avg"
        return layout(root).persona_vector(trait), key
    raise VectorError(f"{name!r} is not a vector name (<trait>, <trait>:svd, persona:<id> or assistant_axis)")


def resolver(root, paths: bool = False):
    """Name → steering tensor from the pipeline's artifacts, for ``serve`` and training-time steering.

    ``<trait>`` / ``<trait>:svd`` → persona_vectors ([layers × hidden], mean-diff or SVD);
    ``persona:<id>`` → that persona's CMA-ES direction ([hidden]);
    ``assistant_axis`` → the Assistant Axis ([layers × hidden]).
    Unknown names resolve to None. Only names are accepted, and a file whose real
    path (symlinks followed) leaves ``root`` is refused, because ``serve`` resolves
    names sent by clients. ``paths=True`` (trusted run config only) also accepts a
    ``.safetensors`` path, giving its first tensor. Tensors are loaded once and
    cached per file version (path, mtime, size), so a re-materialised vector is re-read.
    """
    import threading
    from pathlib import Path

    from safetensors import SafetensorError

    root = Path(root)
    cache: dict[tuple, torch.Tensor] = {}
    lock = threading.Lock()

    def load(path: Path, key: str | None, name: str) -> torch.Tensor:
        st = path.stat()
        stamp = (str(path), key, st.st_mtime_ns, st.st_size)
        with lock:  # not the model lock: loading a vector never holds up generation
            if stamp not in cache:
                try:
                    tensors = load_tensors(path)
                except (OSError, SafetensorError) as e:  # truncated, garbled or unreadable
                    raise VectorError(f"vector {name!r}: cannot read {path.name}: {e}") from None
                if key is not None and key not in tensors:
                    raise VectorError(f"vector {name!r}: {path.name} has no tensor {key!r}")
                tensor = tensors[key] if key is not None else next(iter(tensors.values()))
                if len(cache) >= 64:  # a bound, not an LRU: a server sees a handful of vectors
                    cache.clear()
                cache[stamp] = tensor
            return cache[stamp]

    def resolve(name: str):
        if paths and name.endswith(".safetensors") and Path(name).is_file():
            return load(Path(name), None, name)
        path, key = _vector_location(root, name)
        if not path.exists():
            return None
        real, inside = path.resolve(), root.resolve()
        if not real.is_relative_to(inside):
            raise VectorError(f"vector {name!r}: refused, its file resolves outside the artifacts folder")
        return load(real, key, name)

    return resolve
