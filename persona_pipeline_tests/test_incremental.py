"""Editing one persona spec makes only that persona stale — Dagster's data versions decide,
and rematerialising the stale set regenerates that persona's dialogues and no other's."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from _dagster_helpers import isolated_env, materialize_cmd, run_cli, small_data

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TINY = json.dumps(
    {
        "ops": {
            "synthetic_conversations": {
                "config": {
                    "min_turns": 8,
                    "max_turns": 8,
                    "persona_max_new_tokens": 6,
                    "assistant_max_new_tokens": 6,
                    "max_line_retries": 0,
                }
            }
        }
    }
)


def _observe(env) -> list[str]:
    out = run_cli([str(Path(sys.executable).parent / "persona-pipeline"), "observe"], env).stdout
    return json.loads(out)["stale_synthetic_conversations"]


def test_one_edited_spec_regenerates_one_persona(tmp_path, embedded_dir, shared_home):
    data = small_data(tmp_path)
    env = {**isolated_env(tmp_path, shared_home), "PERSONA_PIPELINE_DATA": str(data)}
    personas = sorted(p.stem for p in (data / "personas").glob("*.yaml"))
    run_cli(materialize_cmd("topics"), env)
    assert _observe(env) == personas  # never materialised: all stale
    rng = f"{personas[0]}...{personas[-1]}"
    run_cli(materialize_cmd("synthetic_conversations", rng) + ["--config-json", TINY], env)
    assert _observe(env) == []
    out = tmp_path / "persona_home" / "assets" / "synthetic_conversations"
    before = {p: (out / f"{p}.parquet").stat().st_mtime_ns for p in personas}
    before_bytes = {p: (out / f"{p}.parquet").read_bytes() for p in personas}

    spec = data / "personas" / "skeptic.yaml"
    raw = yaml.safe_load(spec.read_text())
    raw["description"] = "Recently burned by a refund scam. " + raw["description"]
    spec.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    stale = _observe(env)
    assert stale == ["skeptic"]

    run_cli(materialize_cmd("synthetic_conversations", f"{stale[0]}...{stale[-1]}") + ["--config-json", TINY], env)
    assert _observe(env) == []
    for p in personas:
        same = (out / f"{p}.parquet").stat().st_mtime_ns == before[p] and (
            out / f"{p}.parquet"
        ).read_bytes() == before_bytes[p]
        assert same == (p != "skeptic"), f"{p}: {'regenerated' if not same else 'not regenerated'}"
