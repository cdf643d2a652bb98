"""LossDiff-IRM as the paper defines it, on a tiny model through the CLI: θ_val is θ after one DPO epoch on the
validation pairs (or π_ref, on request), the validation pairs are out of θ's training set and of every selection
(and named in the manifest), the warm-ups report what they learned, and the ``influence`` job checks the scores
against IF, resumably, from the CLI (``--json``) with ``select --band auto`` using its band."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scoring.errors import UserError
from scoring.jobs import runner
from scoring.jobs.influence import influence_request
from scoring.jobs.requests import score_request
from scoring.passes.engine import PassConfig
from scoring.selection.saved import load_selection
from scoring.store.cache import read_json
from scoring.store.jobs import list_jobs
from scoring.train.dpo import DPOTrainConfig
from tests.helpers import ok, run
from tests.jobs.test_pairs import planted_cache, run_on_cpu

pytestmark = pytest.mark.usefixtures("cpu_one_thread")
PASS = PassConfig(max_length=64, chunk_size=16, dtype="fp32", embed=False, alone=False)
DPO = DPOTrainConfig(precision="fp32", learning_rate=2e-3, epochs=2)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, tiny_model):
    """Dataset `sw` (40 arithmetic pairs, 10 swapped) scored twice: θ_val from θ (default) and from π_ref."""
    cache = planted_cache(tmp_path_factory.mktemp("influence"))
    out = {}
    for start in ("ref", "theta"):  # theta last: the latest finished job is the default one
        out[start] = run_on_cpu(cache, score_request(cache, "sw", str(tiny_model), pass_config=PASS, dpo=DPO,
                                                     val_fraction=0.25, val_start=start))  # fmt: skip
    return cache, out


def record_of(card: dict) -> dict:
    return read_json(Path(card["path"]) / "davir_dpo.json")


def test_theta_val_trains_from_theta_unless_asked_for_pi_ref(jobs, tiny_model):
    cache, by_start = jobs
    theta, ref = by_start["theta"], by_start["ref"]
    assert theta.theta_model == ref.theta_model  # the same θ, trained once
    assert record_of(theta.val_model)["base"] == theta.theta_model["fingerprint"]
    assert record_of(ref.val_model)["base"] == ref.model_fingerprint != theta.theta_model["fingerprint"]
    assert theta.val["start"] == "theta" and ref.val["start"] == "ref" and theta.id != ref.id


def test_validation_pairs_are_out_of_thetas_training_and_of_every_selection(jobs, tmp_path):
    cache, by_start = jobs
    job = by_start["theta"]
    assert len(job.val_ids) == job.n_val_pairs == 10
    assert record_of(job.theta_model)["n_pairs"] == 30  # 40 eligible pairs minus the 10 held out
    c = ("--cache", str(cache.root))
    ok(*c, "select", "sw", "--score", "irm", "--budget", "100%", "--include-flagged", "--save", "all")
    _, everything = load_selection(cache, "sw", "all")
    assert len(everything.kept_ids) == 30 and not set(everything.kept_ids) & set(job.val_ids)
    assert {dict(everything.dropped)[i] for i in job.val_ids} == {"flagged:validation_pair"}
    ok(*c, "export", "sw", "all", "--format", "jsonl", "--out", str(tmp_path / "all.jsonl"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(manifest["validation"]["held_out_ids"]) == sorted(job.val_ids)
    assert manifest["validation"]["source"]["start"] == "theta"


def test_the_warm_ups_report_what_they_learned(jobs):
    cache, by_start = jobs
    job = by_start["theta"]
    theta = job.warmups["theta"]
    assert theta["train"]["before"]["reward_accuracy"] == 0.0  # π_ref: every margin is 0
    assert theta["train"]["after"]["reward_accuracy"] > 0.5 and theta["train"]["after"]["reward_margin"] > 0
    assert theta["train"]["after"]["n"] == 30 and theta["validation"]["after"]["n"] == 10
    val = job.warmups["val"]
    assert val["start"] == "theta" and val["train"]["before"] == theta["validation"]["after"]  # θ_val starts at θ
    assert by_start["ref"].warmups["val"]["train"]["before"]["reward_accuracy"] == 0.0
    assert set(job.timings) >= {"ref pass", "theta training", "theta pass", "val training", "val pass"}
    out = ok("--cache", str(cache.root), "status", "sw")
    assert "theta warm-up (from ref) on its own training pairs (n=30): reward accuracy 0.000 ->" in out


def test_influence_runs_from_the_cli_and_prints_json(jobs):
    cache, by_start = jobs
    c = ("--cache", str(cache.root))
    out = ok(*c, "influence", "sw", "--sample", "12", "--json")
    report = json.loads(out.strip().splitlines()[-1])
    assert report["n"] == 12 and set(report) == {"n", "spearman", "overlap"}
    assert set(report["spearman"]) == {"lossdiff", "irm", "davir_dpo", "margin_base", "lossdiff_irm"}
    assert set(report["overlap"]) == set(report["spearman"])
    assert "spearman(IF)" in out and "overlap(TIF)" in out
    (check,) = [j for j in list_jobs(cache, "sw") if j.kind == "influence"]
    assert check.source_job == by_start["theta"].id and check.state == "done"
    parts = sorted((cache.root / "influence" / check.result["key"]).glob("part-*.parquet"))
    assert len(parts) == 1  # 12 pairs: one part of 16
    # asking again is done at once; the π_ref-start job has the same θ and validation pairs: the same IF
    again = json.loads(ok(*c, "influence", "sw", "--sample", "12", "--json").strip().splitlines()[-1])
    assert again == report
    other = runner.run(cache, runner.enqueue(cache, influence_request(cache, "sw", by_start["ref"].id, 12))[0].id)
    assert other.result["key"] == check.result["key"] and other.result["spearman"]["irm"] == report["spearman"]["irm"]
    assert "influence check" in ok(*c, "status", "sw")
    import scoring

    assert scoring.influence("sw", sample=12, cache=cache.root)["spearman"] == report["spearman"]  # the Python API


def test_band_auto_uses_the_influence_band_and_records_it(jobs, tmp_path):
    cache, by_start = jobs
    c = ("--cache", str(cache.root))
    ok(*c, "influence", "sw", "--sample", "12")
    (check,) = [j for j in list_jobs(cache, "sw") if j.kind == "influence" and j.source_job == by_start["theta"].id]
    best = check.result["auto_band"]
    out = ok(*c, "select", "sw", "--rule", "lossdiff-irm", "--band", "auto", "--budget", "100%", "--save", "auto")
    record, _ = load_selection(cache, "sw", "auto")
    assert record["rule"] == f"band:{best['band'][0]:g}-{best['band'][1]:g}" and check.id in record["band_auto"]
    assert "chosen by influence job" in out
    ok(*c, "export", "sw", "auto", "--format", "jsonl", "--out", str(tmp_path / "a.jsonl"))
    assert json.loads((tmp_path / "manifest.json").read_text())["band_auto"] == record["band_auto"]


def test_influence_needs_a_finished_job_with_lossdiff(jobs, tiny_model):
    cache, _ = jobs
    with pytest.raises(UserError, match="at least 3"):
        influence_request(cache, "sw", sample=2)
    only_irm = score_request(cache, "sw", str(tiny_model), scores=["irm"], pass_config=PASS, dpo=DPO)
    runner.enqueue(cache, only_irm)
    with pytest.raises(UserError, match="no finished warm-ups"):
        influence_request(cache, "sw", only_irm.id)
    code, _, err = run("--cache", str(cache.root), "select", "sw", "--rule", "lossdiff-irm", "--band", "auto",
                       "--budget", "100%", "--save", "x", "--job", only_irm.id)  # fmt: skip
    assert code == 2 and "influence" in err
