"""Activations and vector algebra: shapes, one-pass equivalence, filters, SVD sign, PCA, projections."""

import pytest
import torch

from persona_pipeline.activations import Item, extract, middle_layers
from persona_pipeline.backends import SamplingParams
from persona_pipeline.vectors import (
    assistant_axis,
    cosine_matrix,
    keep_pair,
    mean_diff,
    pca,
    project,
    span_share,
    svd_direction,
)

ITEMS = [
    Item([{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "hi"}], "Arr, ahoy there!"),
    Item([{"role": "user", "content": "What is two plus two?"}], "Four."),
    Item([{"role": "user", "content": "Describe the sea"}], ""),
]


def test_extract_returns_three_views_for_every_layer(tiny_backend):
    out = extract(tiny_backend.model, tiny_backend.tok, ITEMS, batch_size=2)
    n_layers, hidden = tiny_backend.model.config.num_hidden_layers, tiny_backend.model.config.hidden_size
    for view in ("response_avg", "prompt_avg", "prompt_last"):
        assert out[view].shape == (3, n_layers, hidden) and out[view].dtype == torch.float32
    assert torch.equal(out["response_avg"][2], out["prompt_last"][2])  # empty response falls back to the boundary


def test_one_pass_for_all_layers_equals_one_layer_alone(tiny_backend):
    everything = extract(tiny_backend.model, tiny_backend.tok, ITEMS)
    alone = extract(tiny_backend.model, tiny_backend.tok, ITEMS, layers=[1])
    assert torch.allclose(everything["response_avg"][:, 1], alone["response_avg"][:, 0], atol=1e-6)


def test_a_mid_layer_read_stops_the_forward_pass_there(tiny_backend):
    from persona_pipeline.hooks import decoder_layers

    blocks, ran = decoder_layers(tiny_backend.model), []
    handle = blocks[-1].register_forward_hook(lambda *_: ran.append(1))
    try:
        extract(tiny_backend.model, tiny_backend.tok, ITEMS, layers=[0])
        assert ran == [], "the layers above the last one read were computed for nothing"
        extract(tiny_backend.model, tiny_backend.tok, ITEMS, layers=[len(blocks) - 1])
        assert ran, "reading the last layer runs the whole pass"
    finally:
        handle.remove()
    out = tiny_backend.complete([[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=3))
    assert len(out) == 1  # no hook left behind: the model still generates


def test_batching_and_padding_do_not_change_activations(tiny_backend):
    batched = extract(tiny_backend.model, tiny_backend.tok, ITEMS, batch_size=3)
    single = extract(tiny_backend.model, tiny_backend.tok, ITEMS, batch_size=1)
    assert torch.allclose(batched["prompt_avg"], single["prompt_avg"], atol=1e-5)


def test_token_level_activations_keep_every_response_token(tiny_backend):
    out = extract(tiny_backend.model, tiny_backend.tok, ITEMS[:2], response_agg="none")
    assert out["response_tokens"].shape[0] == out["response_owner"].shape[0] > 2
    with pytest.raises(ValueError, match="response_agg"):
        extract(tiny_backend.model, tiny_backend.tok, ITEMS, response_agg="max")


def test_filter_mean_diff_and_svd_sign():
    assert keep_pair(80, 10, 90, 70) and not keep_pair(40, 10, 90, 90) and not keep_pair(80, 60, 90, 90)
    assert not keep_pair(80, 10, 30, 90) and not keep_pair(None, 10, 90, 90)
    torch.manual_seed(0)
    direction = torch.zeros(2, 8)
    direction[:, 0] = 1.0
    neg = torch.randn(20, 2, 8) * 0.1
    pos = neg + 3 * direction + torch.randn(20, 2, 8) * 0.05
    md = mean_diff(pos, neg)
    assert md.shape == (2, 8) and md[:, 0].min() > 2.5
    sv = svd_direction(pos, neg)
    assert torch.allclose(sv.norm(dim=-1), torch.ones(2)) and (sv[:, 0] > 0.9).all()
    with pytest.raises(ValueError, match="filter"):
        mean_diff(pos[:0], neg)


def test_projection_span_and_cosines():
    v = torch.tensor([3.0, 4.0])
    assert torch.allclose(project(torch.tensor([[3.0, 4.0], [4.0, -3.0]]), v), torch.tensor([5.0, 0.0]))
    basis = torch.eye(4)[:2]
    assert span_share(torch.tensor([1.0, 1.0, 0, 0]), basis) == pytest.approx(1.0)
    assert span_share(torch.tensor([0, 0, 1.0, 0]), basis) == pytest.approx(0.0)
    cos = cosine_matrix(torch.stack([v, -v, torch.tensor([4.0, -3.0])]))
    assert cos[0, 1] == pytest.approx(-1) and cos[0, 2] == pytest.approx(0, abs=1e-6)


def test_pca_and_assistant_axis_align_when_default_stands_apart():
    torch.manual_seed(1)
    w = torch.randn(16)  # one latent "how assistant-like" factor shared by every dimension
    roles = torch.linspace(-1, 1, 12)[:, None] * w + torch.randn(12, 16) * 0.2
    default = 4.0 * w
    means = torch.cat([roles, default[None]])
    comps, explained, _mu, sigma = pca(means, k=3)
    assert comps.shape == (3, 16) and explained[0] > explained[1] and float(explained.sum()) <= 1 + 1e-6
    axis = assistant_axis(default, roles)
    cos = torch.nn.functional.cosine_similarity(axis / sigma, comps[0], dim=0).abs()
    assert cos > 0.8
    assert middle_layers(30) == [15] and middle_layers(30, 3) == [14, 15, 16]
