"""`simulate` / `chat` worth showing: a topic, sampling controls, and dialogues that are not loops or scaffolding."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from persona_pipeline import loaders
from persona_pipeline.cli import build_parser, pick_topic
from persona_pipeline.scaffolding import distinct_share, echoes_scaffolding, role_audit, speaks_as_assistant
from persona_pipeline.settings import data_root

REPO = Path(__file__).resolve().parent.parent


def test_sampling_defaults_are_not_greedy_and_discourage_repeats():
    for cmd in ("simulate", "chat"):
        a = build_parser().parse_args([cmd, "--persona", "skeptic"])
        assert a.temperature > 0 and a.top_p < 1 and a.repetition_penalty > 1 and a.topic is None
    a = build_parser().parse_args(["simulate", "--persona", "skeptic", "--topic", "Buying a used car", "--seed", "3"])
    assert a.topic == "Buying a used car" and a.seed == 3


def test_the_default_topic_is_a_held_out_one_drawn_by_seed():
    heldout = {t.text for t in loaders.load_topics(data_root() / "topics.yaml") if t.split == "heldout"}
    drawn = {pick_topic("skeptic", None, seed) for seed in range(6)}
    assert drawn <= heldout and len(drawn) > 1
    assert pick_topic("skeptic", None, 2) == pick_topic("skeptic", None, 2)
    assert pick_topic("skeptic", "My own topic", 0) == "My own topic"


def test_scaffolding_and_assistant_speak_are_caught():
    assert echoes_scaffolding("[PERSONA: anxious]\n[HISTORY]\nuser: hi")
    assert echoes_scaffolding("ok\nassistant: Sure, here is")
    assert not echoes_scaffolding("Is the 9pm train still running? I need to be in Milan.")
    assert speaks_as_assistant("Sure! How can I help you today?")
    audit = role_audit(["[HISTORY] x", "fine, thanks", "How can I assist you today?", "what about refunds?"])
    assert audit["scaffolding_share"] == 0.25 and audit["assistant_share"] == 0.25
    assert distinct_share(["The skeptic."] * 3) == pytest.approx(1 / 3) and distinct_share(["a", "b"]) == 1.0


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("adapter", ["sft", "rl"])
def test_a_simulated_dialogue_from_the_demo_adapters_is_no_loop_and_no_scaffolding(materialized, adapter, tmp_path):
    env = materialized[0]
    out = tmp_path / "d.json"
    cli = str(Path(sys.executable).parent / "persona-pipeline")
    args = [cli, "simulate", "--persona", "skeptic", "--turns", "6", "--adapter", adapter, "--out", str(out)]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    conv = json.loads(out.read_text())
    lines = [t["content"] for t in conv["turns"] if t["role"] == "user"]
    assert conv["topic"] != "open" and "topic:" in proc.stderr
    assert distinct_share(lines) > 0.5, lines  # not a loop (the was 1/3: one line three times)
    assert not any(echoes_scaffolding(x) for x in lines), lines
