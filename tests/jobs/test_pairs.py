"""Preference pairs end to end on tiny random-weight models: ingest -> ref pass -> DPO warm-up (π_θ) -> validation
model (θ_val) -> pair scores -> LossDiff-IRM band selection -> export; golden values; DPO really trains; the planted
swapped-pair check; reuse and resume of pair passes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from scoring.errors import UserError
from scoring.ingest import catalog
from scoring.ingest.demo import write_planted_pairs
from scoring.jobs import runner
from scoring.jobs.pairs import validation_split
from scoring.jobs.requests import score_request
from scoring.models.formatting import encode_side, template_fingerprint
from scoring.models.loading import load_tokenizer, resolve
from scoring.passes.engine import PassConfig
from scoring.passes.runner import PAIRS, pass_manifest, run_pass
from scoring.scores.reports import auroc_report
from scoring.scores.tables import loss_table, score_table
from scoring.selection.pairs import DEFAULT_BAND, parse_band, select_lossdiff_irm
from scoring.store.cache import Cache
from scoring.store.jobs import list_jobs
from scoring.store.parts import read_pass
from scoring.train.dpo import DPOTrainConfig, train_dpo
from tests.helpers import ok, run
from tests import golden_pairs
from tests.golden_pipeline import as_records

PAIR_SCORES = ["n_prompt_tokens", "n_response_tokens", "n_chosen_tokens", "n_rejected_tokens", "logp_chosen",
               "logp_rejected", "irm", "lossdiff", "davir_dpo", "margin_base", "len_diff"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("cpu_one_thread")  # tests/conftest.py




def arithmetic_pairs(n: int = 40) -> list[dict]:
    """Right sums preferred over vague wrong ones: one direction a DPO epoch can learn."""
    return [{"id": f"q{i:02d}", "prompt": f"What is {i} + {i}?", "chosen": f"{i} + {i} = {2 * i}.",
             "rejected": f"I think it is {2 * i + 3}, maybe."} for i in range(n)]  # fmt: skip


def planted_cache(tmp: Path) -> Cache:
    """A cache with dataset `sw` ingested through the CLI: 40 arithmetic pairs, 10 of them swapped (labelled)."""
    src = tmp / "src.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_pairs()))
    cache = Cache(tmp / "cache")
    planted, n = write_planted_pairs(str(src), tmp / "sw.jsonl", fraction=0.25, seed=0)
    assert n == 10
    ok("--cache", str(cache.root), "ingest", str(planted), "--name", "sw")
    return cache


def run_on_cpu(cache: Cache, request):
    """Run a job request here, on the CPU with one thread (a module fixture cannot use cpu_one_thread)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAVIR_DEVICE", "cpu")
        torch.set_num_threads(1)
        runner.enqueue(cache, request)
        job = runner.run(cache, request.id)
    assert job.state == "done", job.error
    return job


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model):
    """`sw` (planted_cache) scored by the pair job."""
    cache = planted_cache(tmp_path_factory.mktemp("pairs"))
    # lr high enough that one tiny epoch learns something: via the library (the CLI keeps the defaults)
    run_on_cpu(cache, score_request(cache, "sw", str(tiny_model), pass_config=PassConfig(
        max_length=64, chunk_size=16, dtype="fp32", embed=False, alone=False),
        dpo=DPOTrainConfig(precision="fp32", learning_rate=2e-3, epochs=2), val_fraction=0.25))  # fmt: skip
    return cache


def test_the_job_runs_every_pass_and_records_its_models(scored):
    (job,) = [j for j in list_jobs(scored, "sw") if j.kind == "pair_score"]
    assert job.passes == ["ref", "theta", "val"]
    assert len({job.ref_pass, job.theta_pass, job.val_pass}) == 3
    assert job.theta_model["fingerprint"] != job.val_model["fingerprint"]
    assert job.n_val_pairs == 10  # 25 % of the 40 unflagged pairs
    for role in ("ref", "theta", "val"):
        manifest = pass_manifest(scored, job.pass_key(role))
        assert manifest["complete"] and manifest["kind"] == "pair" and manifest["dtype"] == "float32"


def test_scores_follow_their_formulas(scored):
    table, job = score_table(scored, "sw")
    assert list(table.columns) == ["idx", "id", "flag", *PAIR_SCORES]
    losses = loss_table(scored, "sw", job)
    b = 0.1
    rw, rl = losses["ref_chosen_logp"], losses["ref_rejected_logp"]
    tw, tl = losses["theta_chosen_logp"], losses["theta_rejected_logp"]
    vw, vl = losses["val_chosen_logp"], losses["val_rejected_logp"]
    irm = b * ((tw - rw) - (tl - rl))
    irm_val = b * ((vw - rw) - (vl - rl))
    np.testing.assert_allclose(table["irm"], irm)
    np.testing.assert_allclose(table["lossdiff"], np.log1p(np.exp(-irm)) - np.log1p(np.exp(-irm_val)))
    np.testing.assert_allclose(table["davir_dpo"], b * ((tw - rw) / rw.abs() - (tl - rl) / rl.abs()))
    np.testing.assert_allclose(table["margin_base"], rw - rl)
    np.testing.assert_allclose(table["len_diff"], losses["n_chosen_tokens"] - losses["n_rejected_tokens"])
    assert table[PAIR_SCORES].notna().all().all()
    assert (table["irm"] != 0).all()  # the warm-up moved every pair


def test_irm_ranks_planted_swaps_low_and_status_reports_it(scored):
    table, _ = score_table(scored, "sw")
    report = auroc_report(scored, "sw", table)
    assert set(report["irm"]) == {"swapped_pair", "any"}  # no empty columns for the demo's SFT defect kinds
    assert report["irm"]["swapped_pair"] > 0.9, report["irm"]
    out = ok("--cache", str(scored.root), "status", "sw")
    assert "40 of 40 rows scored" in out and "pair_score" in out
    lines = out[out.index("AUROC"):].splitlines()
    assert lines[1].split() == ["score", "swapped_pair", "any"]
    irm_line = next(line for line in lines if line.split()[:1] == ["irm"])
    assert float(irm_line.split()[1]) == pytest.approx(report["irm"]["swapped_pair"], abs=0.005)


def test_scores_file_has_one_row_per_pair(scored, tmp_path):
    out = tmp_path / "s.csv"
    ok("--cache", str(scored.root), "scores", "sw", "--out", str(out))
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df["id"]) == [f"q{i:02d}" for i in range(40)]
    assert {"irm", "lossdiff", "davir_dpo", "margin_base", "len_diff"} <= set(df.columns)


def test_lossdiff_irm_band_selection_and_export(scored, tmp_path):
    c = ("--cache", str(scored.root))
    out = ok(*c, "select", "sw", "--rule", "lossdiff-irm", "--budget", "100%", "--save", "band")
    table, _ = score_table(scored, "sw")
    want = select_lossdiff_irm(table, DEFAULT_BAND)
    from scoring.selection.saved import load_selection

    record, saved = load_selection(scored, "sw", "band")
    assert saved.kept_ids == want.kept_ids and dict(saved.dropped) == dict(want.dropped)
    assert f"kept {len(want.kept_ids)} of 40 pairs" in out
    pool = table[table["flag"] == ""]  # the validation pairs are not in the pool: percentiles among the rest
    assert len(pool) == 30 and (table["flag"][table["flag"] != ""] == "validation_pair").all()
    pct = pool[["lossdiff", "irm"]].rank(pct=False).sub(1).div(len(pool) - 1).mul(100)
    inside = ((pct >= 12 - 1e-9) & (pct <= 88 + 1e-9)).all(axis=1)
    assert set(saved.kept_ids) == set(pool["id"][inside])
    assert set(dict(saved.dropped).values()) == {"outside_band:lossdiff", "outside_band:irm", "flagged:validation_pair"}
    assert record["scores"] == ["lossdiff", "irm"] and record["rule"] == "band:12-88"
    # a narrower band keeps fewer; --band is checked
    ok(*c, "select", "sw", "--rule", "lossdiff-irm", "--band", "30-70", "--budget", "100%", "--save", "narrow")
    assert len(load_selection(scored, "sw", "narrow")[1].kept_ids) < len(saved.kept_ids)
    code, _, err = run(*c, "select", "sw", "--rule", "lossdiff-irm", "--band", "90-10", "--budget", "1", "--save", "x")
    assert code == 2 and "--band" in err and "Traceback" not in err
    # general rules work on any pair score
    ok(*c, "select", "sw", "--score", "margin_base", "--budget", "5", "--save", "top5")
    # export {prompt, chosen, rejected} with the manifest, in every format
    for fmt, name in (("jsonl", "band.jsonl"), ("parquet", "band.parquet"), ("hf", "band_hf")):
        ok(*c, "export", "sw", "band", "--format", fmt, "--out", str(tmp_path / name))
    rows = [json.loads(line) for line in (tmp_path / "band.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == sorted(want.kept_ids)
    assert set(rows[0]) == {"id", "prompt", "chosen", "rejected", "defect"}
    assert len(pd.read_parquet(tmp_path / "band.parquet")) == len(rows)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == len(rows) and "--rule band:12-88" in manifest["reproduce"]
    import datasets

    assert datasets.load_from_disk(str(tmp_path / "band_hf"))["chosen"] == [r["chosen"] for r in rows]


def test_a_second_request_is_done_at_once_and_sft_scores_are_refused(scored, tiny_model):
    c = ("--cache", str(scored.root))
    code, _, err = run(*c, "score", "sw", "--model", str(tiny_model), "--scores", "davir")
    assert code == 2 and "unknown score(s) davir for pair data" in err
    code, _, err = run(*c, "select", "sw", "--budget", "5", "--save", "x")
    assert code == 2 and "--score is required" in err


def test_golden_pair_scores(tiny_model, cache):
    """The 20-pair fixture through the whole pair pipeline equals the frozen output."""
    got = as_records(golden_pairs.run(cache, tiny_model))
    want = json.loads(golden_pairs.GOLDEN.read_text())
    assert [r["id"] for r in got] == [r["id"] for r in want]
    assert [r["flag"] for r in got] == [r["flag"] for r in want]
    assert [w["flag"] for w in want[15:]] == ["identical_pair", "empty_rejected", "duplicate", "too_long", "empty_chosen"]
    for g, w in zip(got, want):
        for name in golden_pairs.SCORES:
            if w[name] is None:
                assert g[name] is None, (g["id"], name)
            else:
                assert g[name] == pytest.approx(w[name], rel=1e-3, abs=1e-4), (g["id"], name)
    assert want[15]["irm"] == 0 and want[18]["irm"] is None  # identical pair: no margin; prompt fills max_length
    assert np.mean([w["irm"] for w in want[:15]]) > 0  # DPO widened the margins it trained on


@pytest.mark.parametrize("method", ["full", "lora"])
def test_dpo_training_changes_the_weights_and_is_reused(cache, tiny_model, method):
    base = resolve(str(tiny_model), cache)
    tok = load_tokenizer(base)
    pairs = [([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"]) for r in arithmetic_pairs(8)]
    cfg = DPOTrainConfig(method=method, precision="fp32", learning_rate=1e-3, lora_learning_rate=1e-2)
    trained = train_dpo(cache, base, tok, pairs, template_fingerprint(tok), 64, cfg)
    before, after = load_file(str(tiny_model / "model.safetensors")), load_file(trained.path + "/model.safetensors")
    assert before.keys() == after.keys()  # LoRA merged back
    assert [k for k in before if not torch.equal(before[k], after[k])], "no weight moved"
    mtime = (Path(trained.path) / "model.safetensors").stat().st_mtime_ns
    again = train_dpo(cache, base, tok, pairs, template_fingerprint(tok), 64, cfg)
    assert again.path == trained.path and (Path(again.path) / "model.safetensors").stat().st_mtime_ns == mtime
    other = train_dpo(cache, base, tok, pairs[:4], template_fingerprint(tok), 64, cfg)
    assert other.path != trained.path


def test_encode_side_scores_only_the_final_reply(tiny_model):
    tok = load_tokenizer(resolve(str(tiny_model), Cache(tiny_model / "c")))
    prompt = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
              {"role": "user", "content": "Sum?"}]  # fmt: skip
    e = encode_side(tok, prompt, "Four.", 256)
    assert tok.decode([t for t, s in zip(e.ids, e.scored) if s]) == "Four.<|im_end|>"
    cut = encode_side(tok, prompt, "Four.", e.n_prompt_tokens - 2)  # the reply is cut away entirely
    assert cut.n_response_tokens == 0 and "too_long" in cut.flag


def test_pair_pass_resumes_and_gives_identical_numbers(cache, tiny_model, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_pairs(20)))
    catalog.ingest(str(src), cache, name="p", progress=False)
    examples = catalog.load_examples(cache, "p", columns=["idx", "id", "flag", "messages", "response", "rejected"])
    ref = resolve(str(tiny_model), cache)
    tok = load_tokenizer(ref)
    from scoring.models.loading import load_model

    model = load_model(ref)
    config = PassConfig(max_length=64, chunk_size=6, dtype="fp32", embed=False, alone=False)
    calls = []
    stopped = run_pass(cache, "k1", PAIRS, model, tok, examples, config,
                       should_stop=lambda: calls.append(1) or len(calls) > 2)
    assert not stopped and len(list(cache.parts_dir("k1").glob("part-*.parquet"))) == 2
    assert run_pass(cache, "k1", PAIRS, model, tok, examples, config)
    assert run_pass(cache, "k2", PAIRS, model, tok, examples, config)
    a = read_pass(cache, "k1", ["idx", "chosen_logp", "rejected_logp", "n_chosen_tokens"])
    b = read_pass(cache, "k2", ["idx", "chosen_logp", "rejected_logp", "n_chosen_tokens"])
    assert len(a) == 20 and a.equals(b)


def test_validation_split_and_band_parsing():
    ids = [f"x{i}" for i in range(50)]
    held = validation_split(ids, 0.1)
    assert len(held) == 5 and held == validation_split(list(reversed(ids)), 0.1)
    assert len(validation_split(ids[:3], 0.1)) == 1
    with pytest.raises(UserError):
        validation_split(ids, 0.0)
    assert parse_band(None) == DEFAULT_BAND and parse_band("5-95") == (5.0, 95.0)
    for bad in ("95-5", "abc", "0-101"):
        with pytest.raises(UserError):
            parse_band(bad)


def test_user_given_validation_file(cache, tiny_model, tmp_path):
    src, val = tmp_path / "t.jsonl", tmp_path / "v.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_pairs(12)))
    val.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_pairs(16)[12:]))
    catalog.ingest(str(src), cache, name="t", progress=False)
    request = score_request(cache, "t", str(tiny_model), pass_config=PassConfig(
        max_length=64, dtype="fp32", embed=False, alone=False), dpo=DPOTrainConfig(precision="fp32"), val=str(val))
    assert request.val["dataset"] == "t-val" and catalog.dataset_meta(cache, "t-val")["n_rows"] == 4
    runner.enqueue(cache, request)
    job = runner.run(cache, request.id)
    assert job.state == "done" and job.n_val_pairs == 4, job.error
    only_ref = score_request(cache, "t", str(tiny_model), scores=["margin_base"])
    assert only_ref.passes == ["ref"] and only_ref.dpo is None and only_ref.val is None


def test_score_command_on_a_pair_dataset(cache, tiny_model, tmp_path):
    """`score NAME --wait` runs the pair job with the CLI defaults; asking again returns at once."""
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_pairs(16)))
    c = ("--cache", str(cache.root))
    ok(*c, "ingest", str(src), "--name", "c")
    out = ok(*c, "score", "c", "--model", str(tiny_model), "--max-length", "64", "--val-fraction", "0.25", "--wait")
    assert "done" in out
    (job,) = [j for j in list_jobs(cache, "c") if j.kind == "pair_score"]
    assert job.dpo["beta"] == 0.1 and job.dpo["learning_rate"] == 5e-6 and job.val["fraction"] == 0.25
    assert "already done" in ok(*c, "score", "c", "--model", str(tiny_model), "--max-length", "64",
                                "--val-fraction", "0.25")  # fmt: skip
    table, _ = score_table(cache, "c")
    assert table["lossdiff"].notna().all() and len(table) == 16


def test_pair_example_gives_texts_and_per_token_losses(scored):
    from scoring.queries.tokens import pair_example

    table, job = score_table(scored, "sw")
    ex = pair_example(scored, "sw", 3)
    assert ex["id"] == "q03" and ex["prompt"] == "What is 3 + 3?" and set(ex["tokens"]) == {"ref", "theta", "val"}
    ref = ex["tokens"]["ref"]
    assert len(ref["chosen"]["ids"]) == table["n_chosen_tokens"][3] == len(ref["chosen"]["nll"])
    assert -ref["chosen"]["nll"].sum() == pytest.approx(table["logp_chosen"][3], abs=0.05)  # float16 per token
    with pytest.raises(UserError):
        pair_example(scored, "sw", 999)
