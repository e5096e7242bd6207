"""Held-out test dialogues: every contestant advances in lockstep batches (tiny model)."""

import torch

from persona_pipeline.eval_dialogues import Contestant, next_lines, persona_turns, run_dialogues
from persona_pipeline.prompts import neutral_user_chat


def _sim(topic, turns):
    return neutral_user_chat(topic, turns)


class CountingBackend:
    """Wraps a real backend and records batch sizes (to show lockstep batching)."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, []

    def complete(self, chats, params):
        self.calls.append(len(chats))
        return self.inner.complete(chats, params)

    def steered(self, steers):
        return self.inner.steered(steers)


def test_dialogues_have_the_requested_turns_and_batch_per_model(tiny_backend):
    hidden = tiny_backend.model.config.hidden_size
    racers = [
        Contestant("prompt", "a", "base", _sim),
        Contestant("steer", "a", "base", _sim, torch.randn(hidden), 1),
        Contestant("prompt", "b", "base", _sim),
        Contestant("sft", "b", "sft", _sim),
        Contestant("steer2", "b", "base", _sim, torch.randn(hidden), 0),
    ]
    base, sft, assistant = CountingBackend(tiny_backend), CountingBackend(tiny_backend), CountingBackend(tiny_backend)
    convs = run_dialogues(
        racers,
        {"a": ["trains"], "b": ["tea", "maps"]},
        {"base": base, "sft": sft},
        assistant,
        turns=10,
        persona_tokens=3,
        assistant_tokens=3,
    )
    assert len(convs) == 1 + 1 + 2 + 2 + 2
    assert all(len(c.turns) == 10 and c.turns[0].role == "user" for c in convs)
    assert {c.metadata.generation_model for c in convs} == {"prompt", "steer", "steer2", "sft"}
    # 5 persona steps: base speaks in ONE call (unsteered rows and rows steered at layers 1 and 0 together),
    # sft in one; the assistant once per step
    assert base.calls == [6] * 5 and sft.calls == [2] * 5 and assistant.calls == [8] * 5
    turns = persona_turns(convs[0])
    assert [t["turn"] for t in turns] == [1, 2, 3, 4, 5] and turns[2]["history"] == [
        t.model_dump() for t in convs[0].turns[:4]
    ]


def test_next_lines_give_every_method_a_line_for_the_same_context(tiny_backend):
    racers = [Contestant(m, "a", "base", _sim) for m in ("x", "y")] + [Contestant("z", "b", "base", _sim)]
    ctx = [
        {
            "id": "c1",
            "persona_id": "a",
            "topic": "bikes",
            "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        }
    ]
    out = next_lines(racers, ctx, {"base": tiny_backend}, max_new_tokens=3)
    assert set(out) == {"c1"} and set(out["c1"]) == {"x", "y"}
    assert ctx[0]["history"][-1]["content"] == "hello"  # the caller's context is not mutated
