"""The Dagster UI in a real headless Chromium against a real ``dagster-webserver`` on a loopback port.

``persona_specs`` and ``topics`` are materialised through the CLI on a throwaway instance, then
``dagster-webserver -w workspace.yaml`` is started on that instance. Checked:

* GraphQL (``POST /graphql``): every asset in ``defs`` is served, each in its group.
* Page 1, the global asset lineage (``/asset-groups``): the five group nodes are drawn in the graph and,
  with the sidebar tree expanded, every asset key is listed under its own group. Then one group's graph
  (``/locations/<location>/asset-groups/specs``) shows each of its asset nodes.
* Page 2, the ``topics`` asset (``/assets/topics``): the latest materialisation's metadata table has the
  ``scenario_types_plot`` key; its ``[Show Markdown]`` dialog renders the plot as an ``<img>`` whose
  ``data:image/png`` source decodes (naturalWidth > 0) and is byte-for-byte the PNG saved next to it.

Screenshots (and the webserver log) go to ``tmp_path`` and, if ``PERSONA_TEST_ARTIFACTS`` is set,
are copied to ``$PERSONA_TEST_ARTIFACTS/ui_browser/``.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from _browser import free_port, launch, needs_chromium
from _dagster_helpers import REPO, isolated_env, materialize_cmd, run_cli

WEBSERVER = str(Path(sys.executable).parent / "dagster-webserver")
GROUPS = ("specs", "data", "models", "representations", "evaluation")
KEYS = (
    "persona_specs",
    "synthetic_conversations",
    "sft_adapter",
    "persona_vectors",
    "steering_sweep",
    "leaderboard",
    "eval_report",
)
PLOT_KEY = "scenario_types_plot"
STARTUP_TIMEOUT = 120

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.timeout(300),
    needs_chromium,
]


def _graphql(url: str, query: str) -> dict:
    req = urllib.request.Request(
        url + "/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = json.load(resp)
    assert not body.get("errors"), body["errors"]
    return body["data"]


LOCATIONS_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def _log_tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


def _wait_until_served(url: str, proc: subprocess.Popen, log: Path) -> str:
    """Block until /server_info answers and the code location is loaded; returns the location name."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    info = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {proc.returncode}:\n{_log_tail(log)}")
        try:
            if info is None:
                with urllib.request.urlopen(url + "/server_info", timeout=5) as resp:
                    info = json.load(resp)
            entries = _graphql(url, LOCATIONS_QUERY)["workspaceOrError"].get("locationEntries") or []
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
                assert not errors, f"code location failed to load: {errors}"
                assert len(entries) == 1, entries
                return entries[0]["name"]
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(1)
    pytest.fail(
        f"dagster-webserver not serving the code location after {STARTUP_TIMEOUT}s "
        f"(server_info: {info}):\n{_log_tail(log)}"
    )


@pytest.fixture()
def webserver(tmp_path, shared_home, artifacts):
    """A throwaway instance with persona_specs + topics materialised, served by dagster-webserver.

    Yields (base url, location name, env). The server runs in its own session so teardown can stop it
    together with the code server it spawned.
    """
    env = isolated_env(tmp_path, shared_home)
    run_cli(materialize_cmd("persona_specs,topics"), env, timeout=300)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = artifacts / "dagster_webserver.log"
    with log.open("w") as log_fh:
        proc = subprocess.Popen(
            [WEBSERVER, "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        location = _wait_until_served(url, proc, log)
        yield url, location, env
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        try:  # the code server child shares the session; make sure nothing outlives the test
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _in_view(graph, keys, margin: float = 160) -> bool:
    """Every key is drawn as a visible label inside the graph's viewport (room below for its node card)."""
    frame = graph.bounding_box()
    frame = {**frame, "height": frame["height"] - margin}
    for key in keys:
        label = graph.get_by_text(key, exact=True).filter(visible=True)
        box = label.first.bounding_box() if label.count() else None
        if (
            not box
            or box["y"] < frame["y"]
            or box["y"] + box["height"] > frame["y"] + frame["height"]
            or box["x"] < frame["x"]
            or box["x"] + box["width"] > frame["x"] + frame["width"]
        ):
            return False
    return True


def _expected_groups() -> dict[str, str]:
    from persona_pipeline.defs.definitions import defs

    return {spec.key.to_user_string(): spec.group_name for spec in defs.resolve_all_asset_specs()}


def _runnable_keys() -> set[str]:
    from persona_pipeline.defs.definitions import defs

    graph = defs.resolve_asset_graph()
    return {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).is_executable}


def test_asset_graph_and_plot_metadata_in_real_browser(webserver, artifacts):
    from playwright.sync_api import expect, sync_playwright

    url, location, env = webserver
    expected = _expected_groups()
    assert set(expected.values()) == set(GROUPS) and set(KEYS) <= set(expected)

    # the API: every asset in defs, each in its group
    nodes = _graphql(url, "{ assetNodes { assetKey { path } groupName } }")["assetNodes"]
    served = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in nodes}
    assert served == expected

    plot_file = Path(env["PERSONA_PIPELINE_HOME"]) / "plots" / "topics_per_scenario_type.png"
    assert plot_file.exists(), "topics did not write its scenario_types plot"
    plot_src = "data:image/png;base64," + base64.b64encode(plot_file.read_bytes()).decode()

    with sync_playwright() as p:
        browser = launch(p)
        try:
            # tall enough that the (virtualised) sidebar tree draws every group and asset row at once
            height = max(1400, 32 * (len(expected) + len(GROUPS)) + 300)
            page = browser.new_page(viewport={"width": 1920, "height": height})
            page.set_default_timeout(30_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # first visit on a fresh instance: a "Join the Dagster community" dialog may pop up
            page.add_locator_handler(page.get_by_role("button", name="Skip", exact=True), lambda b: b.click())

            # page 1: global asset lineage; groups are drawn collapsed in the graph
            page.goto(url + "/asset-groups")
            expect(page.get_by_text("Global asset lineage")).to_be_visible(timeout=60_000)
            graph = page.locator("[data-svg-viewport]")
            for group in GROUPS:
                expect(graph.get_by_text(group, exact=True).filter(visible=True).first).to_be_visible()
            # open every group in the sidebar tree: asset keys listed under their groups
            tree = page.locator("[class*=VirtualizedTable_container]").first
            for group in GROUPS:
                row = tree.locator("[class*=AssetSidebarNode_itemContainer]").filter(
                    has=page.locator(f"[title='{group}']")
                )
                row.locator("button:has([aria-label=arrow_drop_down])").click()
            for key in expected:
                expect(tree.locator(f"[title='{key}']")).to_be_visible()
            for key in KEYS:
                expect(tree.get_by_text(key, exact=True).filter(visible=True)).to_be_visible()
            # the tree's row order nests each key under its group
            titles = tree.locator("[class*=AssetSidebarNode_itemContainer] [title]").evaluate_all(
                "els => els.map(e => e.getAttribute('title'))"
            )
            listed, current = {}, None
            for title in titles:
                if title in GROUPS:
                    current = title
                else:
                    listed[title] = current
            assert listed == expected, titles
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(artifacts / "01_asset_lineage_groups.png"))

            # one group's own graph: its asset nodes, by key
            page.goto(f"{url}/locations/{location}/asset-groups/specs")
            graph = page.locator("[data-svg-viewport]")
            # materialisable assets are nodes of the group graph (external inputs like persona_files may not be)
            runnable = _runnable_keys()
            specs_keys = sorted(k for k, g in expected.items() if g == "specs" and k in runnable)
            first_node = graph.get_by_text(specs_keys[0], exact=True).filter(visible=True).first
            expect(first_node).to_be_visible(timeout=60_000)
            # the graph opens at 100 % and draws only nodes inside the viewport: zoom out until all fit
            zoom_out = graph.locator("button:has([aria-label=zoom_out])")
            for _ in range(20):
                if _in_view(graph, specs_keys):
                    break
                zoom_out.click()
                page.wait_for_timeout(300)
            for key in specs_keys:
                expect(graph.get_by_text(key, exact=True).filter(visible=True).first).to_be_in_viewport()
            assert _in_view(graph, specs_keys), specs_keys
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(artifacts / "02_asset_group_specs_graph.png"))

            # page 2: the topics asset; the latest materialisation's metadata has the plot
            page.goto(url + "/assets/topics")
            row = page.locator("tr").filter(has=page.get_by_text(PLOT_KEY, exact=True))
            expect(row).to_have_count(1, timeout=60_000)
            expect(row.get_by_text(PLOT_KEY, exact=True)).to_be_visible()
            expect(page.locator("tr").filter(has=page.get_by_text("topics", exact=True))).to_have_count(1)
            page.screenshot(path=str(artifacts / "03_topics_metadata.png"), full_page=True)
            # markdown metadata sits behind a "[Show Markdown]" button that opens a dialog
            row.get_by_text("[Show Markdown]").click()
            dialog = page.get_by_role("dialog")
            expect(dialog).to_be_visible()
            expect(dialog.get_by_text(PLOT_KEY, exact=True)).to_be_visible()
            img = dialog.locator("img[src^='data:image/png;base64,']")
            expect(img).to_have_count(1)
            expect(img).to_be_visible()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
            width, height, alt, src = img.evaluate("e => [e.naturalWidth, e.naturalHeight, e.alt, e.src]")
            assert width > 100 and height > 100, (width, height)
            assert alt == PLOT_KEY
            assert src == plot_src, "the rendered plot is not the PNG topics saved"
            box = img.bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100, box
            page.screenshot(path=str(artifacts / "04_topics_scenario_types_plot.png"))
            assert errors == [], errors
        finally:
            browser.close()

    for name in (
        "01_asset_lineage_groups.png",
        "02_asset_group_specs_graph.png",
        "03_topics_metadata.png",
        "04_topics_scenario_types_plot.png",
    ):
        assert (artifacts / name).stat().st_size > 0, name
