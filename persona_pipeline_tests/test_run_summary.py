"""What `make demo` shows: library noise filtered precisely, the user's own errors kept, a short summary."""

from __future__ import annotations

from pathlib import Path

from persona_pipeline.run_summary import StageView, summary
from persona_pipeline.storage import write_records

SITE = "/work/.venv/lib/python3.11/site-packages"
RUN = "2026-12-03 08:09:04 +0000 - dagster - {level} - __ASSET_JOB - c064a5ea-be63-420c-a566-8b3ed2f5391d - 20812 - "

RAW = [
    f"{SITE}/click/core.py:911: SupersessionWarning: Function `asset_materialize_command` is superseded.",
    "  return callback(*args, **kwargs)",
    f"{SITE}/dagster/_core/decorator_utils.py:232: BetaWarning: Parameter `backfill_policy` is in beta.",
    "  return fn(*args, **kwargs)",
    f"{SITE}/transformers/modeling_utils.py:88: FutureWarning: `torch_dtype` is deprecated! Use `dtype` instead!",
    "  warnings.warn(",
    "Failed to load CPU gemm_4bit_forward from kernels-community: offline",
    "Loading weights: 100%|██████████| 272/272 [00:00<00:00, 12428.38it/s]",
    RUN.format(level="DEBUG") + "RUN_START - Started execution of run.",
    RUN.format(level="DEBUG") + 'synthetic_conversations - STEP_START - Started execution of step "x".',
    RUN.format(level="INFO") + "synthetic_conversations - step 3: 4/8 dialogues finished",
    RUN.format(level="DEBUG") + 'synthetic_conversations - STEP_SUCCESS - Finished execution of step "x" in 41.2s.',
    RUN.format(level="WARNING") + "trait_responses - humorous: positive and negative answers do not separate",
    RUN.format(level="INFO").replace("20812 - ", "") + "role_transcripts - rollouts: 30/30 generated",  # no pid
    f"{SITE}/peft/utils/save_and_load.py:313: UserWarning: Could not find a config file in HF/x.",
    "  warnings.warn(",
    "{'loss': '1.823', 'grad_norm': '3.353', 'learning_rate': '6.667e-05', 'epoch': '0.0301'}",
    " 33%|███▎      | 1/3 [01:00<02:01, 60.99s/it]",
    "/work/main/persona_pipeline/simulate.py:40: UserWarning: your own code warned",  # not a library: kept
    "Traceback (most recent call last):",
    '  File "/work/main/persona_pipeline/x.py", line 3, in f',
    "ValueError: data_assets/personas/x.yaml: field 'id': bad",
    RUN.format(level="ERROR") + 'sft_adapter - STEP_FAILURE - Execution of step "sft_adapter" failed.',
]


def test_stage_view_drops_library_noise_and_keeps_everything_else():
    view = StageView()
    shown = [s for s in (view.show(line) for line in RAW) if s is not None]
    text = "\n".join(shown)
    for noise in ("SupersessionWarning", "BetaWarning", "FutureWarning", "gemm_4bit", "Loading weights", "RUN_START"):
        assert noise not in text
    assert "  ✓ synthetic_conversations (41.2s)" in shown
    assert "    synthetic_conversations: step 3: 4/8 dialogues finished" in shown
    assert "    role_transcripts: rollouts: 30/30 generated" in shown
    assert not any("Could not find a config" in s or "'loss'" in s or "s/it]" in s for s in shown)
    assert any(s.startswith("  warning: trait_responses") or "do not separate" in s for s in shown)
    assert "UserWarning: your own code warned" in text  # the user's own warning
    assert (
        "Traceback (most recent call last):" in shown
        and "ValueError: data_assets/personas/x.yaml: field 'id': bad" in shown
    )
    assert '  File "/work/main/persona_pipeline/x.py", line 3, in f' in shown  # a traceback's indented lines stay
    assert any(s.startswith("  ✗ sft_adapter") for s in shown) and view.failed_steps == ["sft_adapter"]
    assert view.dropped == 14


def test_summary_names_report_leaderboard_checks_and_next_step(tmp_path: Path):
    home = tmp_path / "home"
    (home / "reports").mkdir(parents=True)
    (home / "reports" / "eval_report.html").write_text("<html></html>")
    base = {"adherence_ci_low": 0.1, "adherence_ci_high": 0.5, "adherence_n_units": 12}
    write_records(
        home / "assets" / "leaderboard.parquet",
        [
            {**base, "persona_id": "ALL", "method": "prompt", "adherence_mean": 0.3, "adherence_diff": None},
            {
                **base,
                "persona_id": "ALL",
                "method": "sft",
                "adherence_mean": 0.45,
                "adherence_diff": 0.15,
                "adherence_verdict": "not significant",
            },
            {**base, "persona_id": "skeptic", "method": "rl", "adherence_mean": 0.9, "adherence_diff": 0.2},
        ],
    )
    checks = [
        {"asset": "conversations", "name": "min_turns", "status": "passed", "detail": ""},
        {"asset": "rl_adapter", "name": "reward_not_below_sft", "status": "warned", "detail": "RL 0.41 < SFT 0.44"},
        {"asset": "sft_pairs", "name": "one_pair_per_turn", "status": "failed", "detail": "3 turns without a pair"},
    ]
    text = summary(home, checks, 600.4, 29, home / "runs" / "x")
    assert "materialised 29 assets in 600 s" in text
    assert (home / "reports" / "eval_report.html").as_uri() in text
    lines = text.splitlines()
    board = lines.index(next(x for x in lines if x.startswith("leaderboard")))
    assert lines[board + 1].split()[:2] == ["sft", "0.450"] and "Δ 0.150 (not significant)" in lines[board + 1]
    assert lines[board + 2].split()[:2] == ["prompt", "0.300"] and "skeptic" not in text  # overall rows only
    assert "1/3 passed" in text
    assert text.index("failed   sft_pairs.one_pair_per_turn") < text.index("warned   rl_adapter.reward_not_below_sft")
    assert text.rstrip().endswith("make dev   (the Dagster UI: lineage, metadata, plots, checks)")


def test_summary_without_results(tmp_path: Path):
    text = summary(tmp_path, [], 3.0, 2, tmp_path / "runs")
    assert "(not built in this selection)" in text and "none evaluated" in text and "leaderboard" not in text


def test_check_results_read_from_a_real_instance(tmp_path, monkeypatch):
    """The summary's check list comes from the instance's latest evaluations: passed / warned / failed."""
    import dagster as dg

    from persona_pipeline.defs.runplan import check_results

    (tmp_path / "dagster.yaml").write_text("")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    key = dg.AssetKey("conversations")
    with dg.DagsterInstance.get() as instance:
        for name, passed, severity in [
            ("min_turns", False, dg.AssetCheckSeverity.WARN),
            ("no_empty_turn", True, dg.AssetCheckSeverity.ERROR),
            ("no_persona_break", False, dg.AssetCheckSeverity.ERROR),
        ]:
            instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(
                    asset_key=key, check_name=name, passed=passed, severity=severity, description=f"{name} said so"
                )
            )
    got = {c["name"]: (c["status"], c["detail"]) for c in check_results()}
    assert got == {
        "min_turns": ("warned", "min_turns said so"),
        "no_empty_turn": ("passed", ""),
        "no_persona_break": ("failed", "no_persona_break said so"),
    }


def test_summary_leads_with_the_independent_evaluator(tmp_path: Path):
    """RL is optimised on the primary judge: the summary ranks by the persona-id classifier when it ran."""
    home = tmp_path / "home"
    rows = [
        {"persona_id": "ALL", "method": "rl", "adherence_mean": 0.9, "optimised_on": "reward"},
        {"persona_id": "ALL", "method": "prompt", "adherence_mean": 0.5, "optimised_on": None},
    ]
    ngram = {"rl": 0.2, "prompt": 0.4}
    write_records(
        home / "assets" / "leaderboard.parquet",
        [{**r, "eval_persona_id_ngram_mean": ngram[r["method"]], "eval_persona_id_ngram_n_units": 2} for r in rows],
    )
    lines = summary(home, [], 1.0, 1, home / "runs").splitlines()
    board = lines.index(next(x for x in lines if x.startswith("leaderboard")))
    assert "independent" in lines[board] and "NOT independent" not in lines[board]
    assert lines[board + 1].split()[:2] == ["prompt", "0.400"] and lines[board + 2].split()[:2] == ["rl", "0.200"]

    write_records(home / "assets" / "leaderboard.parquet", rows)  # no independent evaluator ran
    lines = summary(home, [], 1.0, 1, home / "runs").splitlines()
    board = lines.index(next(x for x in lines if x.startswith("leaderboard")))
    assert "NOT independent" in lines[board] and lines[board + 1].endswith("[optimised on this judge]")
