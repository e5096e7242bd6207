"""A step's plots land together with its stored value, or not at all (a real Dagster run, in process).

An asset that draws two plots and succeeds writes both, after its value; one that draws a
plot and then fails leaves the previous plot untouched — the PNGs on disk never disagree
with what Dagster recorded.
"""

import dagster as dg
import pytest

from persona_pipeline.defs.assets._common import _STAGED_PLOTS, png_meta
from persona_pipeline.defs.io_manager import ArtifactIOManager
from persona_pipeline.layout import layout
from persona_pipeline.plots import line_plot


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONA_PIPELINE_HOME", str(tmp_path))
    return tmp_path


def curve(title: str) -> bytes:
    return line_plot({"a": ([0, 1, 2], [0.0, 1.0, 0.5])}, title, "x", "y")


@dg.asset
def two_plots(context: dg.AssetExecutionContext) -> dict:
    plots: dict[str, str] = {}
    meta = {**png_meta(curve("first"), "first_plot", "first", plots=plots)}
    meta.update(png_meta(curve("second"), "second_plot", "second", plots=plots))
    assert not layout().plot("first_plot").exists(), "staged, not yet written: the value is not stored"
    context.add_output_metadata(meta)
    return {"plots": plots}


@dg.asset
def fails_after_plotting() -> dict:
    png_meta(curve("new"), "kept_plot", "kept")
    raise RuntimeError("the step fails after drawing its plot")


def run(asset) -> dg.ExecuteInProcessResult:
    return dg.materialize([asset], resources={"io_manager": ArtifactIOManager()}, raise_on_error=False)


def test_a_steps_plots_are_written_together_after_its_value(home):
    result = run(two_plots)
    assert result.success
    value = result.output_for_node("two_plots")
    for name in ("first_plot", "second_plot"):
        path = layout().plot(name)
        assert value["plots"][name] == str(path) and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not _STAGED_PLOTS, "nothing left staged after the commit"


def test_a_step_that_fails_after_plotting_changes_no_plot(home):
    old = layout().plot("kept_plot")
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"the previous run's plot")
    result = run(fails_after_plotting)
    assert not result.success
    assert old.read_bytes() == b"the previous run's plot"
    assert sorted(p.name for p in old.parent.iterdir()) == ["kept_plot.png"]  # no stray new file


def test_called_outside_dagster_a_plot_is_written_at_once(home):
    meta = png_meta(curve("direct"), "direct_plot", "direct")
    assert layout().plot("direct_plot").exists() and "direct_png" in meta
