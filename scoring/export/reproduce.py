"""The manifest's ``reproduce_anywhere`` block: how to rebuild an export in a cache that has never seen its data.

The manifest's one-line ``reproduce`` names the score job by its id, which exists only in the cache that ran it.
This block starts from what any cache can start from: the dataset's source as ingest recorded it in the dataset's
meta (path, pattern or hub id; its format; ``--limit`` and ``--map``), then the ``score`` command with the score
job's model and every option it was run with (the inverse of how ``python -m scoring score`` builds the job from
its flags: scoring.jobs.requests.score_request), the ``select`` command without ``--job`` (in a fresh cache the only
score job is the one just run) and the export command. Run the steps in order (``line`` joins them with ``&&``),
with ``--cache`` or $DAVIR_CACHE naming the new cache; the job id is the same there when the data, the model and
the options are (it is a fingerprint of them).
"""
from __future__ import annotations

import glob
import shlex

from scoring.ingest.sources import DATA_SUFFIXES
from scoring.store.cache import Cache, read_json
from scoring.store.jobs import Job, read_job

PREFIX = "python -m scoring"


def source_format(source: str) -> str:
    """What kind of source ingest read, from the source string it recorded: a data file's suffix ("jsonl",
    "csv.gz", …), "glob" (a pattern of files), "folder" (a folder of files or a save_to_disk folder) or "hub" (a
    Hugging Face dataset id)."""
    lower = source.lower()
    suffix = next((s for s in DATA_SUFFIXES if lower.endswith(s)), None)
    if glob.has_magic(source):
        return "glob"
    if suffix:
        return suffix[1:]
    return "folder" if source.startswith(("/", "\\", ".", "~")) or source[1:3] in (":\\", ":/") else "hub"


def ingest_command(meta: dict) -> str:
    """The ``ingest`` line that reads the dataset's source again under the same name with the same options."""
    q = shlex.quote
    parts = [PREFIX, "ingest", q(str(meta.get("source") or "SOURCE")), "--name", q(str(meta["name"]))]
    if meta.get("limit"):
        parts += ["--limit", str(int(meta["limit"]))]
    for fld, column in (meta.get("field_map") or {}).items():
        parts += ["--map", q(f"{fld}={column}")]
    return " ".join(parts)


def dataset_source(meta: dict) -> dict:
    """The dataset's source as ingest recorded it, and what its content must come out as."""
    source = str(meta.get("source") or "")
    return {"name": meta.get("name"), "source": source, "format": source_format(source) if source else None,
            "options": {"limit": meta.get("limit"), "field_map": meta.get("field_map")},
            "layout": meta.get("layout"), "kind": meta.get("kind") or "sft", "n_rows": meta.get("n_rows"),
            "fingerprint": meta.get("fingerprint")}  # fmt: skip


def _training_flags(job: Job) -> list[str]:
    """The flags of the reference fine-tune (instruction data) or the DPO warm-ups and validation split (pairs)."""
    q = shlex.quote
    parts: list[str] = []
    if job.reference and job.reference != "train":
        parts += ["--reference", q(job.reference)]
    trained = job.dpo or job.train or {}
    if trained:  # a record may lack a field (older jobs, hand-written fixtures): then the default applies
        parts += ["--train-method", str(trained.get("method", "full"))]
        parts += ["--epochs", repr(float(trained["epochs"]))] if "epochs" in trained else []
    if job.dpo:
        parts += ["--beta", repr(float(job.dpo["beta"]))] if "beta" in job.dpo else []
        parts += ["--objective", str(job.dpo.get("objective", "dpo"))]
    val = job.val or {}
    if val.get("dataset"):
        parts += ["--val", q(str(val["dataset"]))]
    elif "fraction" in val:
        parts += ["--val-fraction", repr(float(val["fraction"]))]
    if val.get("start"):
        parts += ["--val-from", str(val["start"])]
    return parts


def score_command(job: Job) -> str:
    """The ``score`` line that asks for exactly ``job``'s request: model, scores, pass options and training."""
    q = shlex.quote
    config = job.pass_config or {}
    parts = [PREFIX, "score", q(job.dataset), "--model", q(str(job.model)), "--scores", q(",".join(job.scores))]
    if config.get("max_length"):
        parts += ["--max-length", str(int(config["max_length"]))]
    if config.get("batch_tokens"):  # part of the job's fingerprint: the numbers' low-order bits depend on it
        parts += ["--batch-tokens", str(int(config["batch_tokens"]))]
    if config.get("compile"):
        parts.append("--compile")
    if config.get("kernels") == "off":
        parts.append("--no-kernels")
    if config.get("pack", "auto") != "auto":
        parts += ["--pack", str(config["pack"])]
    if job.trust_remote_code:
        parts.append("--trust-remote-code")
    return " ".join([*parts, *_training_flags(job), "--wait"])


def _score_job(cache: Cache, record: dict) -> Job | None:
    runs = record.get("runs") or []
    return read_job(cache, runs[0]) if runs else None


def reproduce_anywhere(cache: Cache, meta: dict, record: dict, select_line: str | None, export_line: str) -> dict:
    """The block: the dataset's source, the model, and the ingest, score, select and export commands (``steps`` in
    order, a validation dataset's ingest first when the score job used one; ``line`` joins them with ``&&``).
    ``select_line`` None: a hand-picked selection, which no command rebuilds (a note says so)."""
    job = _score_job(cache, record)
    steps, notes = [ingest_command(meta)], []
    val_name = ((job.val or {}).get("dataset") if job else None) or None
    val_meta = read_json(cache.dataset_meta_path(val_name)) if val_name else None
    if isinstance(val_meta, dict):
        steps.insert(0, ingest_command(val_meta))
    if job is None:
        notes.append("the score job this selection read is no longer in the cache: score the dataset with the "
                     "model and options it was scored with before selecting")  # fmt: skip
    else:
        steps.append(score_command(job))
    if select_line is None:
        notes.append(f"a hand-picked set ({record.get('source') or 'chosen by hand'}): no select command rebuilds "
                     "it; its kept ids are the rows of this export and kept_sha256")  # fmt: skip
    steps += [line for line in (select_line, export_line) if line]
    block = {
        "source": dataset_source(meta),
        "model": None if job is None else {"name": job.model, "fingerprint": job.model_fingerprint},
        "ingest": steps[1] if isinstance(val_meta, dict) else steps[0],
        "score": score_command(job) if job else None,
        "select": select_line,
        "export": export_line,
        "steps": steps,
        "line": " && ".join(steps),
        "notes": notes + ["run in any cache: add --cache FOLDER (or set DAVIR_CACHE) to each command"],
    }
    if job is not None:
        block["score_job"] = {"pass_config": job.pass_config, "train": job.train, "dpo": job.dpo, "val": job.val,
                              "reference_fingerprint": job.reference_fingerprint}  # fmt: skip
    if isinstance(val_meta, dict):
        block["validation_source"] = dataset_source(val_meta)
    return block
