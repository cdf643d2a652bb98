"""The Export page through Streamlit's AppTest, on a small synthetic scored cache (tests/synthetic.py).

Issue 14, defect 4: "Export name" kept the first selection's default, so a second selection was written into the
first one's folder and a third export replaced that folder's manifest. The name now follows the chosen selection
(a name the user typed stays with the selection it was typed for), and the library refuses to write a selection
into another selection's folder, which the page shows with st.error. Also: an empty selection is refused with
st.error, and a partial one says so.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scoring.selection.rules import SelectionResult
from scoring.selection.saved import SelectionSpec, save_selection, save_spec
from scoring.store.cache import Cache
from tests import synthetic
from tests.helpers import open_app

N = 120
DATASET = "synth"


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("app-export") / "cache"
    synthetic.build(root, n=N, dataset=DATASET)
    cache = Cache(root)
    for name, budget in (("first", "10"), ("second", "20"), ("third", "30")):
        save_spec(cache, SelectionSpec(dataset=DATASET, scores=("davir",), budget=budget), name)
    spec = {"dataset": DATASET, "scores": ["davir"], "rule": "top", "budget": "6%", "runs": [], "name": "empty"}
    save_selection(cache, DATASET, "empty", SelectionResult([], {"x": "unscored"}, N, 0), spec)
    return root


@pytest.fixture
def export_page(cache_root, monkeypatch):
    monkeypatch.setenv("DAVIR_CACHE", str(cache_root))
    return lambda: open_app("export")


def manifest_of(cache_root: Path, folder: str) -> dict:
    return json.loads((cache_root / "exports" / folder / "manifest.json").read_text())


def command(at) -> str:
    return at.code[0].value


def test_the_export_name_follows_the_selection(export_page, cache_root):
    """Defect 4, in the page: the second and third selections go to folders of their own, each with its own
    manifest; the CLI line follows the name."""
    at = export_page()
    at.selectbox(key="export_selection").set_value("first").run()
    at.radio(key="export_format").set_value("jsonl").run()
    assert at.text_input(key="export_name").value == f"{DATASET}-first"
    at.button(key="export_go").click().run()
    assert not at.error and not at.exception
    for name in ("second", "third"):
        at.selectbox(key="export_selection").set_value(name).run()
        assert at.text_input(key="export_name").value == f"{DATASET}-{name}"
        assert f"/exports/{DATASET}-{name}/{DATASET}-{name}.jsonl" in command(at)
        at.button(key="export_go").click().run()
        assert not at.error, [e.value for e in at.error]
    for name, n in (("first", 10), ("second", 20), ("third", 30)):
        manifest = manifest_of(cache_root, f"{DATASET}-{name}")
        assert manifest["selection"] == name and manifest["n_rows_written"] == n
        assert sorted(p.name for p in (cache_root / "exports" / f"{DATASET}-{name}").iterdir()) == sorted([
            f"{DATASET}-{name}.jsonl", "manifest.json"])


def test_a_typed_name_stays_with_its_selection(export_page):
    at = export_page()
    at.selectbox(key="export_selection").set_value("first").run()
    at.text_input(key="export_name").set_value("my-first").run()
    assert "/exports/my-first/" in command(at)
    at.selectbox(key="export_selection").set_value("second").run()
    assert at.text_input(key="export_name").value == f"{DATASET}-second"
    assert "/exports/my-first/" not in command(at) and f"/exports/{DATASET}-second/" in command(at)
    at.selectbox(key="export_selection").set_value("first").run()
    assert at.text_input(key="export_name").value == "my-first"
    at.text_input(key="export_name").set_value("").run()  # an empty name falls back to the selection's default
    assert f"/exports/{DATASET}-first/" in command(at)


def test_another_selections_folder_is_refused_with_st_error(export_page, cache_root):
    at = export_page()
    at.selectbox(key="export_selection").set_value("first").run()
    at.text_input(key="export_name").set_value("shared").run()
    at.button(key="export_go").click().run()
    assert not at.error and manifest_of(cache_root, "shared")["selection"] == "first"
    at.selectbox(key="export_selection").set_value("second").run()
    at.text_input(key="export_name").set_value("shared").run()
    at.button(key="export_go").click().run()
    assert at.error and "belongs to selection 'first'" in at.error[0].value
    assert manifest_of(cache_root, "shared")["selection"] == "first"
    assert not (cache_root / "exports" / "shared" / f"{DATASET}-second.jsonl").exists()


def test_an_empty_selection_is_refused_with_st_error(export_page, cache_root):
    at = export_page()
    at.selectbox(key="export_selection").set_value("empty").run()
    at.button(key="export_go").click().run()
    assert at.error and "kept no rows" in at.error[0].value and "nothing exported" in at.error[0].value
    assert not (cache_root / "exports" / f"{DATASET}-empty").exists()
    assert not at.success
