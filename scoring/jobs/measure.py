"""What a trained model scores on an evaluation's eval sets, one number per eval example (the paired statistics in
scoring.selection.evaluation need them per example, not just the mean).

- Instruction data: ``nll`` = the mean NLL per response token of each eval example's reference response (a pass of
  the model over the eval set, by the same pass runner and cache as scoring, so a repeated measurement is free);
  where the eval set carries computed answers (the demo's held-out tasks: an ``answer`` column that is not the
  reference reply itself, as GSM8K's is), ``accuracy`` = whether the greedy answer contains the right one
  (scoring.passes.generate.answer_correct).
- Preference pairs: ``preference_accuracy`` = whether the policy's implicit reward ranks chosen above rejected
  (margin m = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)] > 0; a tie counts one half, so π_ref
  itself scores 0.5, not 0) and ``dpo_loss`` = −log σ(β m). π_ref is the score job's base model.

The arm's reported value of a metric is the mean over eval examples (each example weighs the same).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from scoring import ranks
from scoring.errors import UserError
from scoring.ingest.catalog import dataset_kind, dataset_meta, ingest, list_datasets, load_examples
from scoring.ingest.demo import answers_of
from scoring.jobs.steps import Steps, Stopped
from scoring.models.loading import ModelRef, load_model, pick_device
from scoring.passes.engine import PassConfig
from scoring.passes.generate import answer_correct, greedy_answers
from scoring.passes.runner import INSTRUCTIONS, PAIRS
from scoring.store.cache import Cache, atomic_write_parquet, read_json
from scoring.store.keys import key_of
from scoring.store.parts import read_pass

GENERATION_CODE_VERSION = "1"
MAX_NEW_TOKENS = 48  # the demo's answers are 5-60 tokens; the answer comes first in all of them
PRIMARY = {"sft": "nll", "pair": "preference_accuracy"}  # the metric comparisons are judged on (accuracy if any)


@dataclass
class EvalSet:
    """One eval set of an evaluation: an ingested dataset (or the held-out share of the evaluated one)."""

    name: str  # the key in the report: the dataset's name, or "<dataset>-holdout"
    fingerprint: str
    kind: str  # "sft" | "pair"
    examples: pd.DataFrame  # the eligible (unflagged) rows, in idx order
    answers: list[str] | None = None  # computed answers, when every row has one: accuracy is measured

    @property
    def metrics(self) -> list[str]:
        if self.kind == "pair":
            return ["preference_accuracy", "dpo_loss"]
        return ["accuracy", "nll"] if self.answers else ["nll"]

    @property
    def primary(self) -> str:
        return self.metrics[0]


def resolve_eval(cache: Cache, source: str) -> dict:
    """``--eval SOURCE``: an ingested dataset's name, or any source ``ingest`` reads (ingested under its default
    name, or that name + "-eval" when the name holds other data). Returns {name, fingerprint, kind}."""
    known = {m["name"] for m in list_datasets(cache)}
    if source in known:
        name = source
    else:
        try:
            name = ingest(source, cache, progress=False).name
        except UserError as error:
            if "already holds other data" not in str(error):
                raise
            name = ingest(source, cache, name=f"{_stem(source)}-eval", replace=True, progress=False).name
    meta = dataset_meta(cache, name)
    return {"name": name, "fingerprint": meta["fingerprint"], "kind": dataset_kind(cache, name)}


def _stem(source: str) -> str:
    stem = source.rstrip("/").split("/")[-1].split(".")[0]
    return "".join(c if c.isalnum() or c in "_-." else "-" for c in stem)[:50] or "eval"


def load_eval_set(cache: Cache, spec: dict, columns: list[str]) -> EvalSet:
    """The eligible rows of an eval dataset named in a request (checking it was not replaced since)."""
    meta = dataset_meta(cache, spec["name"])
    if meta["fingerprint"] != spec["fingerprint"]:
        raise UserError(f"eval set {spec['name']!r} was replaced since the evaluation was asked for; ask again")
    examples = load_examples(cache, spec["name"], columns=list(dict.fromkeys([*columns, "flag", "original"])))
    return eval_set(spec["name"], spec["fingerprint"], spec["kind"], examples)


def eval_set(name: str, fingerprint: str, kind: str, examples: pd.DataFrame) -> EvalSet:
    """An :class:`EvalSet` of ``examples``' unflagged rows; accuracy is measured when every one has an answer."""
    rows = examples[examples["flag"].fillna("") == ""].sort_values("idx").reset_index(drop=True)
    if not len(rows):
        raise UserError(f"eval set {name!r} has no unflagged example to evaluate on")
    answers = answers_of(rows) if kind == "sft" and "original" in rows else None
    if not answers or not all(answers) or all(a.strip() == _reply(m) for a, m in zip(answers, rows["messages"])):
        answers = None  # an "answer" column that is the reference reply itself (GSM8K's) is not a computed answer
    return EvalSet(name, fingerprint, kind, rows, answers)


def _reply(messages: str) -> str:
    """The last assistant turn of a conversation (its reference reply), stripped."""
    turns = [m for m in json.loads(messages) if m.get("role") == "assistant"]
    return str(turns[-1].get("content", "")).strip() if turns else ""


def measure(steps: Steps, model: ModelRef, ev: EvalSet, config: PassConfig, ref: ModelRef, beta: float,
            label: str = "eval") -> dict:  # fmt: skip
    """{metric: (E,) per-example values} of ``model`` on ``ev`` (NaN-free; E = rows of ``ev`` with scored
    tokens). ``ref`` (π_ref) and ``beta`` are used for pairs only; ``label`` names the model in the progress."""
    if ev.kind == "pair":
        return _pair_metrics(steps, model, ev, config, ref, beta, label)
    key = steps.fill(label, INSTRUCTIONS, model, ev.examples, config, (ev.name, ev.fingerprint), record=False)
    losses = read_pass(steps.cache, key, ["idx", "loss_sum", "n_response_tokens"]).set_index("idx")
    losses = losses.loc[ev.examples["idx"]]
    n = losses["n_response_tokens"].to_numpy(dtype=float)
    scored = n > 0
    out = {"nll": (losses["loss_sum"].to_numpy(dtype=float)[scored] / n[scored])}
    if ev.answers:
        correct = _accuracy(steps, model, ev, label)
        out["accuracy"] = correct[scored]
    return out


def _pair_metrics(steps: Steps, model: ModelRef, ev: EvalSet, config: PassConfig, ref: ModelRef, beta: float,
                  label: str) -> dict:  # fmt: skip
    where = (ev.name, ev.fingerprint)
    sides = ["idx", "chosen_logp", "rejected_logp", "n_chosen_tokens", "n_rejected_tokens"]
    ref_key = steps.fill("ref", PAIRS, ref, ev.examples, config, where, record=False)
    key = ref_key if model.fingerprint == ref.fingerprint else steps.fill(label, PAIRS, model, ev.examples, config,
                                                                          where, record=False)  # fmt: skip
    r = read_pass(steps.cache, ref_key, sides).set_index("idx").loc[ev.examples["idx"]]
    p = read_pass(steps.cache, key, sides).set_index("idx").loc[ev.examples["idx"]]
    scored = ((r["n_chosen_tokens"] > 0) & (r["n_rejected_tokens"] > 0)).to_numpy()
    margin = ((p["chosen_logp"] - r["chosen_logp"]) - (p["rejected_logp"] - r["rejected_logp"])).to_numpy()[scored]
    accuracy = np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))
    return {"preference_accuracy": accuracy, "dpo_loss": np.logaddexp(0.0, -beta * margin)}  # softplus(-βm)


def _accuracy(steps: Steps, model: ModelRef, ev: EvalSet, label: str) -> np.ndarray:
    """1.0 / 0.0 per eval example: the greedy answer contains the computed one. Generations are cached by content
    (model, eval set, template, length) under ``<cache>/evaluations/generations/``."""
    cache = steps.cache
    key = key_of({"model": model.fingerprint, "eval": ev.fingerprint, "template": steps.template,
                  "max_new_tokens": MAX_NEW_TOKENS, "code": GENERATION_CODE_VERSION})  # fmt: skip
    path = cache.root / "evaluations" / "generations" / f"{key}.parquet"
    if not ranks.from_main(path.exists()):
        stopped = False
        if ranks.current().main:  # under a launcher, rank 0 generates while the others wait
            try:
                _generate(steps, model, ev, label, path)
            except Stopped:
                stopped = True
        if ranks.any_true(stopped):
            raise Stopped()
    texts = pd.read_parquet(path).set_index("idx").loc[ev.examples["idx"], "text"].tolist()
    return np.array([float(answer_correct(t, a)) for t, a in zip(texts, ev.answers)])


def _generate(steps: Steps, model: ModelRef, ev: EvalSet, label: str, path) -> None:
    """Greedy answers of ``model`` to the eval set's prompts, saved at ``path``."""
    steps.stage(f"greedy answers ({label} model, on {ev.name})", done=0, total=len(ev.examples), eta_s=None,
                tokens_per_s=None)
    conversations = [[m for m in json.loads(ms) if m["role"] != "assistant"] for ms in ev.examples["messages"]]
    net = load_model(model, pick_device(), None, steps.job.trust_remote_code)
    texts = greedy_answers(net, steps.tokenizer, conversations, max_new_tokens=MAX_NEW_TOKENS,
                           on_progress=lambda n: _generated(steps, n))  # fmt: skip
    atomic_write_parquet(path, pa.table({"idx": ev.examples["idx"].to_numpy(), "text": texts}))


def _generated(steps: Steps, n: int) -> None:
    """Progress of the greedy answers, and the place a cancel request stops them (between two batches)."""
    steps.stage(steps.job.stage, done=n)
    if steps.should_stop():
        raise Stopped()


def record_steps(model: ModelRef) -> int | None:
    """The optimizer steps a trained checkpoint took (from the record training saved beside it)."""
    for name in ("davir_reference.json", "davir_dpo.json"):
        record = read_json(Path(model.path) / name)
        if record:
            return int(record.get("steps") or 0)
    return None
