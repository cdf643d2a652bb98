"""The Map's queries (scoring.queries.map) on a small synthetic cache holding one row of untrusted HTML."""
from __future__ import annotations

import numpy as np
import pytest

from scoring.errors import UserError
from scoring.export import export_selection
from scoring.queries import map as qmap
from scoring.queries import view as qview
from scoring.scores.view_reads import column
from scoring.scores.views import score_view
from scoring.selection.saved import (
    SelectionSpec,
    load_selection,
    load_selection_record,
    save_spec,
)
from tests import synthetic

N = 150


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("map") / "cache"
    cache = synthetic.build(root, n=N, dataset="synth", extra_rows=[
        {"id": "xss", "prompt": synthetic.XSS_PROMPT, "response": synthetic.XSS_RESPONSE}])  # fmt: skip
    return cache, score_view(cache, "synth")


def xss_pos(view) -> int:
    return int(np.flatnonzero(column(view, "id") == "xss")[0])


def test_the_sample_is_fixed_seeded_sized_and_sorted(env):
    cache, view = env
    a = qmap.map_points(cache, view, 40, "davir")
    b = qmap.map_points(cache, view, 40, "davir")
    assert len(a) == 40 and a["pos"].tolist() == b["pos"].tolist()
    assert a["pos"].is_monotonic_increasing
    assert set(a["pos"]) <= set(qmap.map_points(cache, view, 80)["pos"])  # the sample of 40 is in the sample of 80
    assert len(qmap.map_points(cache, view, 10_000)) == N + 1  # never more than the laid-out rows
    assert a["x"].dtype == np.float32 and a["davir"].dtype == np.float32
    np.testing.assert_allclose(a["davir"], column(view, "davir")[a["pos"]].astype(np.float32), equal_nan=True)
    assert qmap.sample_frame(cache, view, 40) is qmap.sample_frame(cache, view, 40)  # memoised per (view, n)


def test_snippet_is_plain_one_line_and_the_hover_is_escaped(env):
    cache, view = env
    points = qmap.map_points(cache, view, 5, extra=[xss_pos(view)])
    row = points[points["id"] == "xss"].iloc[0]
    whole = " ".join(f"{synthetic.XSS_PROMPT} → {synthetic.XSS_RESPONSE}".split())
    assert len(whole) > qmap.SNIPPET_CHARS
    assert row["snippet"] == whole[: qmap.SNIPPET_CHARS - 1] + "…"  # the raw text, cut: escaping is for HTML
    assert "<script>" in row["snippet"]
    assert "<script" not in row["hover"] and "<img" not in row["hover"]
    assert row["hover"].startswith("<b>xss</b><br>Say hi &lt;script&gt;window.__xss = 1&lt;/script&gt;")
    other = points[points["id"] != "xss"].iloc[0]
    assert other["snippet"].startswith("Task ") and " → Answer " in other["snippet"] and "\n" not in other["snippet"]


def test_extra_rows_are_added_once(env):
    cache, view = env
    base = qmap.map_points(cache, view, 5)
    extra = [xss_pos(view), int(base["pos"].iloc[0]), xss_pos(view), 10**9]
    out = qmap.map_points(cache, view, 5, extra=extra)
    assert len(out) == 6 and (out["id"] == "xss").sum() == 1


def test_kept_colour_and_unknown_score(env):
    cache, view = env
    kept = np.arange(0, N, 3)
    points = qmap.map_points(cache, view, 10_000, "kept", kept)
    assert set(points.loc[points["kept"] == "kept", "pos"]) == set(kept)
    assert (points["kept"] == "dropped").sum() == N + 1 - len(kept)
    with pytest.raises(UserError, match="no score 'nope'"):
        qmap.map_points(cache, view, 10, "nope")


def test_log_default_for_ppl_like_scores(env):
    _, view = env
    assert qview.log_default(view, "ppl") is True
    assert qview.log_default(view, "davir") is False


def test_saved_positions_follow_the_file(env):
    cache, view = env
    save_spec(cache, SelectionSpec(dataset="synth", scores=("davir",), budget="10"), "top10", replace=True)
    pos, missing = qmap.saved_positions(cache, view, "top10")
    _, result = load_selection(cache, "synth", "top10")
    assert missing == 0 and sorted(column(view, "id")[pos]) == sorted(result.kept_ids)
    save_spec(cache, SelectionSpec(dataset="synth", scores=("davir",), budget="20"), "top10", replace=True)
    assert len(qmap.saved_positions(cache, view, "top10")[0]) == 20  # re-saved: read afresh, not the memo
    with pytest.raises(UserError):
        qmap.saved_positions(cache, view, "missing")


def test_a_hand_picked_set_saves_honestly_and_refuses_to_overwrite(env):
    cache, view = env
    picked = [5, 1, 9, xss_pos(view)]
    _, result = qmap.save_hand_picked(cache, view, "lasso1", picked, order_by="davir")
    values = column(view, "davir")[sorted(picked)]
    best_first = [str(i) for i in column(view, "id")[np.array(sorted(picked))[np.argsort(-values, kind="stable")]]]
    assert result.kept_ids == best_first
    record = load_selection_record(cache, "synth", "lasso1")
    assert record["manual"] is True and record["rule"] == "manual" and record["scores"] == []
    assert record["budget"] == "4" and record["n_kept"] == 4 and record["runs"] == [view.job.id]
    _, loaded = load_selection(cache, "synth", "lasso1")
    assert loaded.kept_ids == best_first
    assert loaded.reason_counts() == {qmap.MANUAL_REASON: N + 1 - 4}
    with pytest.raises(UserError, match="already exists"):
        qmap.save_hand_picked(cache, view, "lasso1", [2, 3])
    assert load_selection_record(cache, "synth", "lasso1")["n_kept"] == 4  # untouched
    qmap.save_hand_picked(cache, view, "lasso1", [2, 3], replace=True)
    assert load_selection_record(cache, "synth", "lasso1")["n_kept"] == 2
    with pytest.raises(UserError, match="Nothing chosen"):
        qmap.save_hand_picked(cache, view, "lasso2", [])
    with pytest.raises(UserError, match="not valid"):
        qmap.save_hand_picked(cache, view, "../x", [1])


def test_a_hand_picked_selection_exports_without_a_select_line(env, tmp_path):
    """A lasso has no rule: the export manifest must not offer a select command that cannot run."""
    cache, view = env
    qmap.save_hand_picked(cache, view, "picked", [0, 3, 5], order_by="davir")
    result = export_selection(cache, "synth", "picked", "jsonl", tmp_path / "picked" / "p.jsonl")
    manifest = result.manifest
    assert result.n_rows == 3 and "scoring select" not in manifest["reproduce"]
    assert not any("scoring select" in step for step in manifest["reproduce_anywhere"]["steps"])
    assert any("hand-picked" in note for note in manifest["reproduce_anywhere"]["notes"])
