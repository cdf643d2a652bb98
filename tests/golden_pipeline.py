"""The golden pipeline: a 20-example fixture through ingest -> base pass -> reference fine-tune -> ref pass -> scores,
on the seeded tiny model, in fp32. Its output is frozen in tests/golden/tiny_scores.json.

Regenerate (and justify the change in the commit message) with:  python -m tests.golden_pipeline
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from scoring.ingest.catalog import ingest
from scoring.jobs.requests import score_request
from scoring.jobs.runner import enqueue, run as run_queued
from scoring.passes.engine import PassConfig
from scoring.scores.tables import score_table
from scoring.store.cache import Cache
from scoring.store.jobs import Job
from scoring.train.sft import TrainConfig

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "golden20.json"
GOLDEN = HERE / "golden" / "tiny_scores.json"
PASS = PassConfig(max_length=128, chunk_size=8, dtype="fp32")
TRAIN = TrainConfig(precision="fp32", learning_rate=1e-3, batch_size=4, micro_batch_size=4, epochs=2)


def run(cache: Cache, model_path: Path):
    ingest(str(FIXTURE), cache, name="golden", progress=False)
    return run_job(cache, "golden", score_request(cache, "golden", str(model_path), pass_config=PASS, train=TRAIN))


def run_job(cache: Cache, name: str, request: Job):
    """Queue ``request``, run it here, and return the dataset's score table."""
    enqueue(cache, request)
    job = run_queued(cache, request.id)
    assert job.state == "done", job.error
    table, _ = score_table(cache, name)
    return table


def as_records(table) -> list[dict]:
    return json.loads(table.drop(columns=["idx"]).to_json(orient="records", double_precision=15))


def regenerate(run_pipeline, golden: Path) -> None:
    """Run ``run_pipeline(cache, model)`` on a fresh seeded tiny model and freeze its table in ``golden``."""
    from tests.tiny import build_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "tiny", chat_template=True)
        table = run_pipeline(Cache(Path(tmp) / "cache"), model)
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(json.dumps(as_records(table), indent=1) + "\n")
        print(f"wrote {golden} ({len(table)} rows)")


if __name__ == "__main__":
    regenerate(run, GOLDEN)
