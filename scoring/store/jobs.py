"""Job records: one typed :class:`Job` per request, kept as ``<cache>/jobs/<id>.json``.

Why here, under every stage: the score tables, the app and the worker all read which passes a job produced, and the
record is a file in the cache like any other. What a job *does* lives in :mod:`scoring.jobs`; this module only
knows the record's fields and how it is written (atomically, by whoever owns the job) and read.

The JSON keeps one flat object per job (``base_pass``, ``ref_pass``, … as top-level keys), so records written by
earlier versions load unchanged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from scoring import ranks
from scoring.errors import UserError
from scoring.store.cache import Cache, atomic_write_json, read_json
from scoring.store.claims import pid_alive

ACTIVE = ("queued", "running")  # a job in one of these states is waited for, never queued again
FINISHED = ("done", "failed", "cancelled")
WAITING = ("queued", "interrupted")  # as list_jobs shows them: what a worker picks up (interrupted: its owner died)
UNFINISHED = ("queued", "running", "interrupted")  # waiting or running, as list_jobs shows them
KINDS = ("score", "pair_score", "layout", "influence", "evaluate")
ROLES = ("base", "ref", "theta", "val")  # the model passes a job can fill, in the order they run

# The request fields of each kind: what the job id is a fingerprint of (with the scores, sorted).
REQUEST_FIELDS = {
    "score": ("kind", "dataset", "dataset_fingerprint", "model", "model_fingerprint", "reference",
              "reference_fingerprint", "train", "passes", "pass_config", "code_version", "trust_remote_code"),
    "pair_score": ("kind", "dataset", "dataset_fingerprint", "model", "model_fingerprint", "passes", "dpo", "val",
                   "pass_config", "code_version", "trust_remote_code"),
    "layout": ("kind", "dataset", "base_pass", "code_version"),
    "influence": ("kind", "dataset", "dataset_fingerprint", "source_job", "influence", "code_version"),
    "evaluate": ("kind", "dataset", "dataset_fingerprint", "model", "model_fingerprint", "source_job", "evaluation",
                 "pass_config", "code_version", "trust_remote_code"),
}  # fmt: skip


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Job:
    """One request (what to compute) and its progress (how far it got). Field groups in order:
    the request, what it produced, and its state."""

    id: str
    kind: str  # one of KINDS
    dataset: str
    # --- the request
    dataset_fingerprint: str | None = None
    model: str | None = None  # as the user named it ("smollm2-135m", a folder, a hub id)
    model_fingerprint: str | None = None
    scores: list[str] = field(default_factory=list)
    passes: list[str] = field(default_factory=list)  # roles to fill, a subset of ROLES
    pass_config: dict = field(default_factory=dict)  # scoring.passes.engine.fingerprint_fields(PassConfig)
    code_version: str | None = None
    trust_remote_code: bool = False
    reference: str | None = None  # SFT: "train" (fine-tune the base) or a model name
    reference_fingerprint: str | None = None
    train: dict | None = None  # SFT reference fine-tune: scoring.train.sft.TrainConfig fields
    dpo: dict | None = None  # pairs: scoring.train.dpo.DPOTrainConfig fields
    val: dict | None = None  # pairs: {"fraction", "seed"} held out, or {"dataset", "fingerprint"}; + "start"
    source_job: str | None = None  # layout / influence: the score job it reads
    influence: dict | None = None  # influence: {"sample", "seed", "params"}
    evaluation: dict | None = None  # evaluate: the arms, eval sets and training config (scoring.jobs.evaluate)
    # --- what it produced
    base_pass: str | None = None
    ref_pass: str | None = None
    theta_pass: str | None = None
    val_pass: str | None = None
    reference_model: dict | None = None  # model cards (scoring.models.loading.model_card) of trained models
    theta_model: dict | None = None
    val_model: dict | None = None
    n_val_pairs: int | None = None
    val_ids: list[str] | None = None  # pairs: ids of the dataset's pairs held out for validation (never trained on
    #                                   by θ, never selectable)
    val_passes: dict | None = None  # pairs with a separate validation dataset: role -> key of its pass over it
    warmups: dict | None = None  # pairs: per warm-up, reward accuracy / margin before and after (scoring.jobs.pairs)
    result: dict | None = None  # influence: the agreement report (scoring.selection.influence); evaluate: the report
    timings: dict | None = None  # seconds per step ("ref pass", "theta training", …) of the run that made them
    peak_mb: dict | None = None  # peak resident memory per step, MB, same names (scoring.jobs.memory)
    # --- its state
    state: str = "queued"  # queued | running | done | failed | cancelled | interrupted (shown, never saved)
    stage: str = "queued"
    done: int = 0
    total: int | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    rss_mb: float | None = None  # the worker's resident memory at the last progress report, MB
    error: str | None = None
    owner_pid: int | None = None
    processes: int | None = None  # how many processes ran it last: 1, or the world of torchrun / accelerate launch
    created: str | None = None
    updated: str | None = None
    finished: str | None = None

    @classmethod
    def from_dict(cls, record: dict) -> Job:
        """A record as read from JSON; keys this version does not know are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    def request(self) -> dict:
        """The fields the id is a fingerprint of (besides the scores)."""
        return {name: getattr(self, name) for name in REQUEST_FIELDS[self.kind]}

    def pass_key(self, role: str) -> str | None:
        """The key of the pass this job filled (or is filling) for ``role``."""
        if role not in ROLES:
            raise ValueError(f"unknown pass role {role!r}")
        return getattr(self, f"{role}_pass")

    def set_pass_key(self, role: str, key: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown pass role {role!r}")
        setattr(self, f"{role}_pass", key)

    def pass_keys(self) -> dict[str, str]:
        """role -> pass key, for the passes that exist."""
        return {role: key for role in ROLES if (key := self.pass_key(role))}

    def progress(self, **changes) -> None:
        """Set state fields (stage, done, total, tokens_per_s, eta_s, …) in one call."""
        for name, value in changes.items():
            if not hasattr(self, name):
                raise AttributeError(f"Job has no field {name!r}")
            setattr(self, name, value)

    @property
    def many_processes(self) -> bool:
        """Whether several processes (a launcher's ranks) ran it last: its ``rss_mb`` is then rank 0's."""
        return (self.processes or 1) > 1

    @property
    def is_pair(self) -> bool:
        return self.kind == "pair_score"

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def unfinished(self) -> bool:
        """Waiting or running, as :func:`list_jobs` shows it (a dead owner's job is "interrupted")."""
        return self.state in UNFINISHED


def job_path(cache: Cache, job_id: str) -> Path:
    return cache.jobs_dir() / f"{job_id}.json"


def cancel_marker(cache: Cache, job_id: str) -> Path:
    """The file another process touches to ask the job's owner to stop after the chunk in flight."""
    return cache.jobs_dir() / f"{job_id}.cancel"


def read_job(cache: Cache, job_id: str) -> Job | None:
    record = read_json(job_path(cache, job_id))
    return Job.from_dict(record) if record else None


def load_job(cache: Cache, job_id: str) -> Job:
    """The job ``job_id`` (a unique prefix is enough); a UserError when there is none."""
    job = read_job(cache, job_id)
    if job is None:
        matches = [p.stem for p in cache.jobs_dir().glob(f"{job_id}*.json")]
        if len(matches) == 1:
            return read_job(cache, matches[0])
        raise UserError(f"no job {job_id!r}; `python -m scoring status` lists the jobs")
    return job


def save_job(cache: Cache, job: Job) -> None:
    """Write the job record atomically; under a launcher only rank 0 writes it (scoring.ranks)."""
    job.updated = now()
    if not ranks.current().main:
        return
    atomic_write_json(job_path(cache, job.id), job.to_dict())


def list_jobs(cache: Cache, dataset: str | None = None) -> list[Job]:
    """Every job (of ``dataset``), oldest first; a running job whose owner died is shown as "interrupted"."""
    records = [read_json(p) for p in sorted(cache.jobs_dir().glob("*.json"))]
    jobs = [Job.from_dict(r) for r in records if r and (dataset is None or r.get("dataset") == dataset)]
    for job in jobs:
        if job.state == "running" and not (job.owner_pid and pid_alive(int(job.owner_pid))):
            job.state, job.stage = "interrupted", f"{job.stage} (worker died; will resume)"
    return sorted(jobs, key=lambda j: j.created or "")
