"""Building job requests, in one place for both dataset kinds: what to compute, fingerprinted into the job id.

A job's id is a fingerprint of its request (dataset content, model weights, reference or DPO settings, passes,
pass config, code version, and the scores asked for), so asking twice for the same thing finds the same job. The
passes it fills are keyed by content too (scoring.passes.runner.pass_key), so asking for ``ifd`` after ``ppl``
makes a new job that reuses every pass and recomputes nothing. Building a request is cheap: it resolves
fingerprints and loads no model.
"""
from __future__ import annotations

from dataclasses import asdict, replace

from scoring.errors import UserError
from scoring.ingest.catalog import dataset_meta, ingest, kind_of, list_datasets
from scoring.jobs.pairs import VAL_STARTS
from scoring.models.loading import DEFAULT_MODEL, resolve
from scoring.passes.engine import PassConfig, default_batch_tokens, default_chunk_size, fingerprint_fields
from scoring.passes.runner import ROW_KINDS
from scoring.scores.registry import DEFAULTS, passes_needed
from scoring.scores.tables import JOB_KIND
from scoring.store.cache import Cache
from scoring.store.jobs import ROLES, Job
from scoring.store.keys import key_of
from scoring.train.dpo import DPOTrainConfig
from scoring.train.sft import TrainConfig

MAP_JOB = "layout"  # the kind of the job that computes a pass's embedding map (its name on disk since v1)
MAP_CODE_VERSION = "1"
DEFAULT_VAL_FRACTION = 0.1

# Pair passes compare log-probabilities of two models (θ - π_ref): small differences, so fp32; no embeddings, no
# prompt-free pass.
PASS_DEFAULTS = {"sft": PassConfig(), "pair": PassConfig(embed=False, alone=False, dtype="fp32")}


def pass_config_for(kind: str, max_length: int | None = None, batch_tokens: int | None = None,
                    compile: bool = False, kernels: str = "auto", pack: str = "auto") -> PassConfig:
    """The kind's default pass config with what the user set on the command line or the Jobs page."""
    base = PASS_DEFAULTS[kind]
    tokens = int(batch_tokens or default_batch_tokens())
    return replace(base, max_length=int(max_length or base.max_length), batch_tokens=tokens,
                   chunk_size=default_chunk_size(tokens), compile=compile, kernels=kernels, pack=pack)  # fmt: skip


def train_configs(method: str = "full", epochs: float = 1.0, pack: str = "auto", batch: int | None = None,
                  tokens: int | None = None, beta: float = 0.1,
                  objective: str = "dpo") -> tuple[TrainConfig, DPOTrainConfig]:  # fmt: skip
    """(the reference fine-tune's, the DPO warm-ups') training configs with what the user set on the command line
    or the Jobs page: the method and epochs for both, ``batch`` examples (pairs) per optimizer step and ``tokens``
    per forward (None: the defaults), the packing for the reference, β and the objective for the warm-ups."""
    if not epochs > 0:
        raise UserError(f"the training epochs must be > 0, not {epochs!r}")
    train = replace(TrainConfig(), method=method, epochs=epochs, pack=pack).sized(batch, tokens)
    dpo = replace(DPOTrainConfig(), beta=beta, method=method, epochs=epochs, objective=objective).sized(batch, tokens)
    return train, dpo


def with_id(job: Job) -> Job:
    """The job with its id: a fingerprint of its request (and, for score jobs, of the sorted score names)."""
    blob = job.request() if job.kind == MAP_JOB else {**job.request(), "scores": sorted(job.scores)}
    job.id = key_of(blob)
    return job


def score_request(
    cache: Cache,
    dataset: str,
    model: str | None = None,
    scores: list[str] | None = None,
    pass_config: PassConfig | None = None,
    *,
    reference: str = "train",
    train: TrainConfig = TrainConfig(),
    dpo: DPOTrainConfig = DPOTrainConfig(),
    val: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    val_start: str = "theta",
    trust_remote_code: bool = False,
) -> Job:
    """The job scoring ``dataset`` (not yet saved), for either kind of dataset.

    Instruction data: ``reference`` is "train" (fine-tune the base with ``train``) or a model name. Preference
    pairs: ``dpo`` configures the warm-ups; ``val`` is a pair dataset name or a file ingested as
    ``<dataset>-val``, else ``val_fraction`` of ``dataset`` is held out; ``val_start`` is what θ_val trains from
    ("theta", the paper's, or "ref"). ``scores``: the kind's defaults when None.
    """
    meta = dataset_meta(cache, dataset)
    kind = kind_of(meta)
    scores = list(scores or DEFAULTS[kind])
    passes = sorted(passes_needed(scores, kind), key=ROLES.index)
    config = pass_config or PASS_DEFAULTS[kind]
    job = Job(id="", kind=JOB_KIND[kind], dataset=dataset, dataset_fingerprint=meta["fingerprint"],
              model=model or DEFAULT_MODEL, model_fingerprint=resolve(model, cache, convert=False).fingerprint,
              scores=scores, passes=passes, pass_config=fingerprint_fields(config),
              code_version=ROW_KINDS[kind].code_version, trust_remote_code=trust_remote_code)  # fmt: skip
    if kind == "pair":
        _pair_request(cache, job, dpo, val, val_fraction, val_start)
    elif "ref" in passes:
        job.reference = reference
        if reference == "train":
            job.train = asdict(train)
        else:
            job.reference_fingerprint = resolve(reference, cache, convert=False).fingerprint
    return with_id(job)


def _pair_request(cache: Cache, job: Job, dpo: DPOTrainConfig, val: str | None, val_fraction: float,
                  val_start: str) -> None:  # fmt: skip
    """The DPO and validation fields of a pair job. Any job that trains θ holds validation pairs out of θ's
    training set (whether or not it trains θ_val), so ``irm`` means the same with or without ``lossdiff``."""
    if job.passes == ["ref"]:
        return
    job.dpo = asdict(dpo)
    if val_start not in VAL_STARTS:
        raise UserError(f"--val-from {val_start!r}: choose one of {', '.join(VAL_STARTS)}")
    if val is not None:
        job.val = _val_dataset(cache, job.dataset, val)
    elif not 0 < val_fraction < 1:  # checked now, not in the worker
        raise UserError(f"--val-fraction {val_fraction}: must lie strictly between 0 and 1")
    else:
        job.val = {"fraction": val_fraction, "seed": dpo.seed}
    job.val["start"] = val_start


def _val_dataset(cache: Cache, dataset: str, val: str) -> dict:
    """The validation pairs named by ``val``: an ingested pair dataset, or a source ingested as ``<dataset>-val``."""
    known = {m["name"] for m in list_datasets(cache)}
    name = val if val in known else f"{dataset}-val"
    if val not in known:
        ingest(val, cache, name=name, replace=True, progress=False)
    meta = dataset_meta(cache, name)
    if kind_of(meta) != "pair":
        raise UserError(f"--val {val}: holds {kind_of(meta)} examples, not preference pairs")
    return {"dataset": name, "fingerprint": meta["fingerprint"]}


def map_request(job: Job) -> Job:
    """The job computing the 2-D embedding map of a score job's base pass."""
    if not job.base_pass:
        raise UserError(f"job {job.id} has no base pass yet; score the dataset first")
    return with_id(Job(id="", kind=MAP_JOB, dataset=job.dataset, base_pass=job.base_pass,
                       code_version=MAP_CODE_VERSION, source_job=job.id))  # fmt: skip
