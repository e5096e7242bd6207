"""Per-row steering, sweeps, CMA-ES search, resumable transcripts and the stage planner (tiny model)."""

import json

import numpy as np
import torch

from persona_pipeline import steer_search as ss
from persona_pipeline import transcripts as tr
from persona_pipeline.backends import SamplingParams
from persona_pipeline.hooks import Steer

GREEDY = SamplingParams(max_new_tokens=5, temperature=0)


def _chats(n):
    return [[{"role": "user", "content": f"question number {i} about the sea"}] for i in range(n)]


def test_per_row_coefs_equal_steering_each_row_alone(tiny_backend):
    """One batched pass with a coef per row gives what steering each row separately gives."""
    v = torch.randn(tiny_backend.model.config.hidden_size)
    chats, coefs = _chats(3), [0.0, 6.0, -6.0]
    with tiny_backend.steered([Steer(v, layer=1, coef=torch.tensor(coefs))]):
        batched = tiny_backend.next_token_logprobs(chats, top_k=5)
    for chat, c, got in zip(chats, coefs, batched):
        with tiny_backend.steered([Steer(v, layer=1, coef=c)]):
            alone = tiny_backend.next_token_logprobs([chat], top_k=5)[0]
        assert got.keys() == alone.keys() and all(abs(got[k] - alone[k]) < 1e-4 for k in got)
    assert batched[0] == tiny_backend.next_token_logprobs([chats[0]], top_k=5)[0]  # coef 0 row is unsteered


def test_per_row_vectors_follow_rows_through_length_sorted_chunks(tiny_backend):
    hidden = tiny_backend.model.config.hidden_size
    chats = [[{"role": "user", "content": "x " * (10 - i)}] for i in range(5)]  # reverse length order
    rows = torch.randn(5, hidden) * 4
    old = tiny_backend.batch_size
    tiny_backend.batch_size = 2
    try:
        with tiny_backend.steered([Steer(rows, layer=0, coef=1.0)]):
            batched = tiny_backend.next_token_logprobs(chats, top_k=3)
    finally:
        tiny_backend.batch_size = old
    for i in (0, 4):
        with tiny_backend.steered([Steer(rows[i], layer=0, coef=1.0)]):
            alone = tiny_backend.next_token_logprobs([chats[i]], top_k=3)[0]
        assert all(abs(batched[i][k] - alone[k]) < 1e-4 for k in alone)


def test_sweep_grid_baseline_summary_best_and_rank_correlation(tiny_backend):
    hidden = tiny_backend.model.config.hidden_size
    rows = ss.sweep_rows(["q one", "q two"], [0, 1], [0.0, 0.5, 1.0], baseline_system="You are a pirate assistant.")
    assert len(rows) == 2 * 3 * 2 + 2 and sum(r["condition"] == "prompt" for r in rows) == 2
    vectors = {0: torch.randn(hidden), 1: torch.randn(hidden)}
    texts = ss.run_sweep(tiny_backend, rows, vectors, {0: 1.0, 1: 1.0}, GREEDY)
    assert len(texts) == len(rows)
    for r in rows:  # a synthetic judge: trait grows with the coefficient, coherence falls
        r["trait_score"] = None if r["condition"] == "prompt" else 20 + 50 * r["rel_coef"] + r["layer"]
        r["coherence"] = None if r["condition"] == "prompt" else 90 - 45 * r["rel_coef"]
    summary = ss.summarise_sweep(rows)
    assert len(summary) == 6 and all(s["n"] == 2 for s in summary)
    best = ss.best_point(summary, min_coherence=50)
    assert (best["layer"], best["rel_coef"]) == (1, 0.5)  # coef 1.0 is incoherent (45)
    assert ss.rank_correlation(summary, 1) == 1.0


def test_zero_push_sweep_rows_match_the_unsteered_model(tiny_backend):
    hidden = tiny_backend.model.config.hidden_size
    rows = ss.sweep_rows(["tell me about ships"], [1], [0.0, 2.0])
    texts = ss.run_sweep(tiny_backend, rows, {1: torch.randn(hidden)}, {1: 50.0}, GREEDY)
    plain = tiny_backend.complete([rows[0]["chat"]], GREEDY)[0]
    assert texts[0] == plain


def test_cmaes_search_batches_population_and_random_search(tiny_backend):
    """The real loop on the tiny model: CMA population + random search in ONE batch per generation,
    bests and histories tracked per target, weights within bounds."""
    hidden = tiny_backend.model.config.hidden_size
    units = ss.unit_rows(torch.randn(3, hidden))
    target = ss.Target("p", "spec", _chats(2), _chats(1), _chats(1))
    s = ss.SearchSettings(layer=1, layer_norm=1.0, alpha=1.0, generations=3, popsize=4, max_new_tokens=2)
    calls = []

    def judge(items):
        calls.append(len(items))
        return [float(-abs(len(line) % 7 - 3) / 3) for _spec, _hist, line in items]

    found = ss.cmaes_search(tiny_backend, judge, [target], units, s)["p"]
    assert len(found["history"]) == 3 and len(found["random_history"]) == 3
    assert calls == [2 * 4 * 2] * 3  # CMA population + random search, both prompts, in ONE batch per generation
    assert round(found["best"][0], 4) == max(h["best"] for h in found["history"])  # history is rounded to 4 places
    assert np.all(np.abs(found["best"][1]) <= 1.0)


def test_cmaes_search_improves_on_a_known_objective():
    """Fitness = −‖w − w*‖² read back from the steering vector (orthonormal trait units): CMA-ES must end
    well above its starting point w = 0 and close to w*, and beat random search with the same budget."""
    k, hidden, w_star = 4, 16, np.array([0.6, -0.4, 0.2, 0.5])
    units = torch.eye(hidden)[:k]
    s = ss.SearchSettings(layer=0, layer_norm=2.0, alpha=0.5, generations=25, popsize=8, sigma0=0.3)
    start = -float(np.sum(w_star**2))

    def known(_backend, _judge, cands, settings):
        scores = []
        for _target, vector, chats in cands:
            w = (vector @ units.T).numpy() / (settings.alpha * settings.layer_norm)
            scores.append([-float(np.sum((w - w_star) ** 2))] * len(chats))
        return scores, [[""] * len(chats) for *_, chats in cands]

    target = ss.Target("p", "spec", _chats(1), _chats(1))
    found = ss.cmaes_search(None, None, [target], units, s, evaluate_fn=known)["p"]
    best, weights = found["best"]
    assert best > start + 0.5 * abs(start)  # far better than where it started
    assert best > -0.01 and np.allclose(weights, w_star, atol=0.1)
    assert best >= found["random_best"][0]
    assert found["history"][-1]["best_so_far"] > found["history"][0]["best_so_far"]


def test_persona_directions_point_from_plain_to_persona_prompt(tiny_backend):
    """The persona's own mean-difference and PCA directions: unit norm, and reading the same texts after
    the persona prompt projects higher on them than after the plain prompt."""
    from persona_pipeline.activations import Item, extract

    persona = [[{"role": "system", "content": "You are a grumpy old sailor."}, *c] for c in _chats(2)]
    plain = _chats(2)
    texts = ["The tide waits for no one.", "Storms again, I tell you."]
    d = ss.persona_directions(tiny_backend, persona, plain, texts, layer=1)
    assert set(d) == {"persona_mean_diff", "persona_pca"}
    acts = extract(
        tiny_backend.model,
        tiny_backend.tok,
        [Item(c, t) for c in persona for t in texts] + [Item(c, t) for c in plain for t in texts],
        [1],
    )["response_avg"][:, 0]
    for v in d.values():
        assert torch.isclose(v.norm(), torch.tensor(1.0), atol=1e-4)
        assert float((acts[:4] @ v).mean()) > float((acts[4:] @ v).mean())


def test_baselines_and_failed_judgements_count_as_worst(tiny_backend):
    hidden = tiny_backend.model.config.hidden_size
    units = ss.unit_rows(torch.randn(2, hidden))
    s = ss.SearchSettings(layer=0, layer_norm=2.0, alpha=0.5, max_new_tokens=2)
    fixed = ss.baseline_vectors(units, s)
    assert fixed["unsteered"] is None and torch.isclose(fixed["pca"].norm(), torch.tensor(1.0))
    t = ss.Target("p", "spec", _chats(1), _chats(2))
    scores, texts = ss.evaluate(
        tiny_backend,
        lambda items: [None, 0.5][: len(items)] + [None] * (len(items) - 2),
        [(t, fixed["pca"], t.heldout_chats)],
        s,
    )
    assert scores == [[-1.0, 0.5]] and len(texts[0]) == 2


def test_resumable_rows_skip_finished_work_and_survive_a_torn_line(tmp_path, tiny_backend):
    from persona_pipeline.contracts import RoleSpec

    role = RoleSpec(role="pirate", description="a pirate", system_prompts=["Be a pirate.", "Arr.", "Ahoy."])
    rows = tr.role_rows(role, ["Who are you?", "What do you value?"], 2, 2, 1)
    assert len(rows) == 4 and {r["system_prompt_idx"] for r in rows} == {0, 1}
    work = tr.ResumableRows(tmp_path, "fp", tr.ROLE_KEY)
    first = tr.generate_rows(tiny_backend, rows[:2], GREEDY, work)
    with work.path.open("a") as f:
        f.write('{"role": "pirate", "system_pro')  # a SIGKILL mid-write
    seen = []
    again = tr.generate_rows(tiny_backend, rows, GREEDY, work, chunk=1, on_chunk=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 2), (2, 2)]  # only the two unfinished rows were generated
    assert [r["response"] for r in again[:2]] == [r["response"] for r in first]
    keys = [tr.row_key(json.loads(x), tr.ROLE_KEY) for x in work.path.read_text().splitlines() if x.endswith("}")]
    assert len(keys) == len(set(keys)) == 4


def test_trait_rows_pair_positive_and_negative_prompts(data_dir):
    from persona_pipeline.loaders import load_traits

    trait = next(t for t in load_traits(data_dir / "traits") if t.trait == "apathetic")
    rows = tr.trait_rows(trait, 2, 3, 1)
    assert len(rows) == 2 * 3 * 2
    pos = next(r for r in rows if r["polarity"] == "pos")
    neg = next(
        r
        for r in rows
        if r["polarity"] == "neg"
        and r["question_idx"] == pos["question_idx"]
        and r["instruction_idx"] == pos["instruction_idx"]
    )
    assert pos["system_prompt"].startswith("You are an apathetic assistant.")
    assert neg["system_prompt"].startswith("You are a helpful assistant.")


def test_stage_plan_groups_the_dag_by_partition_set():
    from persona_pipeline.defs.definitions import defs
    from persona_pipeline.defs.runplan import plan

    stages = plan(defs)
    order = [k.to_user_string() for s in stages for k in s.keys]
    graph = defs.resolve_asset_graph()
    runnable = [k for k in graph.get_all_asset_keys() if graph.get(k).is_executable]  # not external inputs
    assert len(order) == len(set(order)) == len(runnable)
    for s in stages:
        parts = {defs.resolve_asset_graph().get(k).partitions_def for k in s.keys} - {None}
        assert len(parts) <= 1
    pos = {k: i for i, k in enumerate(order)}
    for k in runnable:
        assert all(pos[p.to_user_string()] < pos[k.to_user_string()] for p in graph.get(k).parent_keys if p in runnable)
    assert [k.to_user_string() for k in plan(defs, "persona_vectors")[0].keys] == ["persona_vectors"]
