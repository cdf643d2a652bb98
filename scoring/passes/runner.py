"""One model over one dataset, for both kinds of dataset: loss rows written as immutable Parquet parts.

One chunked runner serves instruction examples and preference pairs alike. A :class:`RowKind` says only what
differs: how an example becomes sequences to score (one conversation; or the chosen and the rejected side of a
pair) and how their loss rows become the example's row of the kind's loss table (``schema.LOSSES`` /
``schema.PAIR_LOSSES``). Everything else is shared:

- the order: examples are scored in chunks of a fixed shuffled order, so partial results are an unbiased sample;
- crash safety: a chunk becomes one part file, written under a temporary name and renamed (scoring/store/parts.py).
  A kill loses at most the chunk in flight; a restart skips every part already on disk, and a chunk's numbers
  depend only on the chunk, so a resumed pass is bit-identical to an uninterrupted one;
- several workers on one machine: each chunk is claimed with an flock before it is computed, so workers can fill
  one pass without writing a part twice; a temp file left by a worker that died holding the claim is removed;
- many processes under ``torchrun`` / ``accelerate launch`` (scoring.ranks): each rank scores a deterministic share
  of the chunks still missing (no lock has to work across nodes), rank 0 writes the manifest, and the ranks return
  together;
- the host's share: the next chunk is tokenised on a thread while the current one is scored (:class:`_PassWork`);
- the pass's manifest (what produced it, complete or not) and its key: a fingerprint of the dataset content, the
  model, the prompt template, every field of the pass config and the kind's code version.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pyarrow as pa

from scoring import ranks, schema
from scoring.models.formatting import Encoded, encode_many, encode_pairs
from scoring.models.loading import ModelRef, dtype_name, load_model, model_card, pick_device, pick_dtype
from scoring.passes.engine import PassConfig, fingerprint_fields, score_encoded
from scoring.store.cache import Cache, atomic_write_json, atomic_write_parquet, read_json, stale_tmp_paths
from scoring.store.claims import try_claim
from scoring.store.jobs import now
from scoring.store.keys import key_of
from scoring.store.parts import claim_path, done_ranges, part_path

SCORE_CODE_VERSION = "2"  # bump when a change alters any number an instruction pass writes (2: packed rows)
PAIR_CODE_VERSION = "1"  # the same for pair passes


@dataclass(frozen=True)
class RowKind:
    """What one kind of dataset supplies to the runner."""

    name: str  # "sft" | "pair"
    schema: pa.Schema  # of its loss table
    columns: tuple[str, ...]  # example columns it reads
    code_version: str
    encode: Callable[[object, list[dict], PassConfig], list[list[Encoded]]]  # (tokenizer, examples, config) -> each
    # example's sequences, all of them tokenised together
    result: Callable[[list[dict]], dict]  # loss rows of those sequences -> the example's row (minus idx, id)
    fixed: tuple[tuple[str, object], ...] = ()  # PassConfig fields this kind always runs with


def _encode_instructions(tokenizer, examples: list[dict], config: PassConfig) -> list[list[Encoded]]:
    conversations = [json.loads(example["messages"]) for example in examples]
    return [[e] for e in encode_many(tokenizer, conversations, config.max_length)]


def _encode_pairs(tokenizer, examples: list[dict], config: PassConfig) -> list[list[Encoded]]:
    pairs = [(json.loads(example["messages"]), example["response"], example["rejected"]) for example in examples]
    return [list(sides) for sides in encode_pairs(tokenizer, pairs, config.max_length)]  # the prompt turns shared


def _pair_result(rows: list[dict]) -> dict:
    chosen, rejected = rows
    return {
        "n_prompt_tokens": chosen["n_prompt_tokens"],
        "n_chosen_tokens": chosen["n_response_tokens"], "n_rejected_tokens": rejected["n_response_tokens"],
        "chosen_logp": -chosen["loss_sum"], "rejected_logp": -rejected["loss_sum"],
        "chosen_token_ids": chosen["token_ids"], "rejected_token_ids": rejected["token_ids"],
        "chosen_token_losses": chosen["token_losses"], "rejected_token_losses": rejected["token_losses"],
        "flag": schema.join_flags(chosen["flag"], rejected["flag"]),
    }  # fmt: skip


INSTRUCTIONS = RowKind("sft", schema.LOSSES, ("idx", "id", "messages"), SCORE_CODE_VERSION, _encode_instructions,
                       lambda rows: rows[0])  # fmt: skip
PAIRS = RowKind("pair", schema.PAIR_LOSSES, ("idx", "id", "flag", "messages", "response", "rejected"),
                PAIR_CODE_VERSION, _encode_pairs, _pair_result, fixed=(("alone", False), ("embed", False)))
ROW_KINDS = {kind.name: kind for kind in (INSTRUCTIONS, PAIRS)}


def pass_key(kind: RowKind, dataset_fp: str, model: ModelRef, template_fp: str, config: PassConfig) -> str:
    """The fingerprint a pass is stored under: same inputs, same key (reuse); anything different, a new pass."""
    blob = {"dataset": dataset_fp, "model": model.fingerprint, "template": template_fp,
            "config": fingerprint_fields(config), "code_version": kind.code_version}  # fmt: skip
    if kind is not INSTRUCTIONS:  # (instruction keys predate the kinds: unchanged, so old caches stay valid)
        blob["kind"] = kind.name
    return key_of(blob)


def scoring_order(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def chunk_ranges(n: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


@dataclass
class PassProgress:
    done: int  # examples written (all parts on disk, this run's and earlier ones)
    total: int
    tokens_per_s: float  # tokens processed per second in this process
    eta_s: float | None


def _score_chunk(kind: RowKind, model, pad_id: int, examples: list[dict], encoded: list[list[Encoded]],
                 config: PassConfig) -> tuple[pa.Table, int]:  # fmt: skip
    """(the chunk's part table, tokens scored): every example's sequences (``kind.encode``'s) in one engine call."""
    flat = [seq for seqs in encoded for seq in seqs]
    rows = score_encoded(model, flat, config, pad_id)
    out, at = [], 0
    for ex, seqs in zip(examples, encoded):
        out.append({"idx": int(ex["idx"]), "id": str(ex["id"]), **kind.result(rows[at : at + len(seqs)])})
        at += len(seqs)
    tokens = sum(len(e.ids) + len(e.alone_ids) * config.alone for e in flat)
    return pa.Table.from_pylist(out, schema=kind.schema), tokens


def run_pass(cache: Cache, key: str, kind: RowKind, model, tokenizer, examples, config: PassConfig,
             on_progress: Callable[[PassProgress], None] | None = None,
             should_stop: Callable[[], bool] | None = None, prefetch: bool = True) -> bool:
    """Fill ``passes/<key>/parts`` until every chunk is on disk. Returns False when stopped early.

    ``examples``: an Arrow table or a DataFrame with the kind's columns (held as Arrow; each chunk's rows become
    Python values only when it is tokenised). One process (or several workers on one machine): chunks
    another live worker has claimed are left to it; once ours are done we wait for theirs to land (or for their
    claim to die with its worker, and then score them). Under a launcher (scoring.ranks), each rank scores its own
    share of the chunks still missing instead, and the ranks return together. ``prefetch``: tokenise the next chunk
    on a thread while this one is scored (:class:`_PassWork`); False tokenises each chunk just before its forward.
    """
    config = replace(config, **dict(kind.fixed))
    parts = cache.parts_dir(key)
    parts.mkdir(parents=True, exist_ok=True)
    work = _PassWork(kind, model, tokenizer, Rows(examples, kind.columns), config, parts, on_progress, prefetch)
    try:
        return _run_ranked(work, should_stop) if ranks.current().many else _run_claimed(work, should_stop)
    finally:
        work.close()


class Rows:
    """A pass's examples, held as Arrow record batches (their text at about its own size); :meth:`take` gives some of
    them as Python dicts. Each batch is taken from for its own rows alone: Arrow's take across a table of 64
    batches costs ~48 ms per 256 of a million rows (Arrow 26), against ~4.5 ms here, and combining the batches would
    copy the whole text once (and overflow a string column past 2 GB)."""

    def __init__(self, examples, columns: tuple[str, ...]):
        table = (examples.select(list(columns)) if isinstance(examples, pa.Table)
                 else pa.Table.from_pandas(examples[list(columns)], preserve_index=False))  # fmt: skip
        self.batches = table.to_batches()
        self.starts = np.cumsum([0, *(b.num_rows for b in self.batches)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, indices) -> list[dict]:
        indices = np.asarray(indices, dtype=np.int64)
        batch_of = np.searchsorted(self.starts, indices, side="right") - 1
        out: list = [None] * len(indices)
        for b in np.unique(batch_of):
            where = np.flatnonzero(batch_of == b)
            for at, row in zip(where, self.batches[b].take(pa.array(indices[where] - self.starts[b])).to_pylist()):
                out[at] = row
        return out


def _run_claimed(work: _PassWork, should_stop: Callable[[], bool] | None) -> bool:
    """The pass in one process, beside any other workers on this machine: each chunk claimed before it is scored."""
    parts = work.parts
    while True:
        todo = [r for r in work.ranges if r not in done_ranges(parts)]
        if not todo:
            _sweep_claims(parts)
            return True
        for (start, end), then in zip(todo, [*todo[1:], None]):  # tokenise the next chunk while this one runs
            if should_stop and should_stop():
                return False
            claim = try_claim(claim_path(parts, start, end))
            if claim is None:  # another worker holds this chunk
                continue
            try:
                scored = not part_path(parts, start, end).exists()  # else finished by another worker since we looked
                if scored:
                    work.score(start, end, then)
            finally:
                claim.release()
            if scored:
                work.report()
        if not done_ranges(parts) >= set(work.ranges):
            time.sleep(0.5)  # the rest is claimed by other workers


def _sweep_claims(parts) -> None:
    """Remove the claim files of finished chunks left by a worker killed between writing a part and releasing its
    claim (a claim nobody holds any more is taken and released, which unlinks it)."""
    for path in parts.glob(".claim-*"):
        claim = try_claim(path)
        if claim:
            claim.release()


class _PassWork:
    """The chunks of one pass and how one of them is tokenised, scored, written and reported.

    Tokenising a chunk (chat templates rendered in Python, then one tokenizer call) is host work; with ``prefetch``
    the next chunk is tokenised on one background thread while the current one is scored, so on a GPU it can run
    while the main thread waits for the device (a wait that releases the GIL), instead of between forwards
    (benchmarks/tokenise.py --pass times both ways). The numbers are the same either way: a chunk's encoding depends
    only on its examples. At most one chunk is tokenised ahead, so memory stays bounded by the chunk size.
    """

    def __init__(self, kind: RowKind, model, tokenizer, rows: Rows, config: PassConfig, parts,
                 on_progress: Callable[[PassProgress], None] | None, prefetch: bool = True):  # fmt: skip
        self.kind, self.model, self.tokenizer, self.rows, self.config = kind, model, tokenizer, rows, config
        self.parts, self.on_progress = parts, on_progress
        self.order = scoring_order(len(rows), config.seed)
        self.ranges = chunk_ranges(len(rows), config.chunk_size)
        self.tokens, self.scored_here, self.written, self.started = 0, 0, 0, time.perf_counter()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="davir-tokenise") if prefetch else None
        self._ahead: tuple[tuple[int, int], Future] | None = None  # the chunk being tokenised ahead, and its future

    def _encode(self, start: int, end: int) -> tuple[list[dict], list[list[Encoded]]]:
        chunk = self.rows.take(self.order[start:end])
        return chunk, self.kind.encode(self.tokenizer, chunk, self.config)

    def _encoded(self, start: int, end: int) -> tuple[list[dict], list[list[Encoded]]]:
        """Chunk [start, end)'s examples and sequences: tokenised ahead if it was (an error there raises here)."""
        ahead, self._ahead = self._ahead, None
        if ahead and ahead[0] == (start, end):
            return ahead[1].result()
        if ahead:  # tokenised for a chunk another worker took: dropped
            ahead[1].cancel()
        return self._encode(start, end)

    def score(self, start: int, end: int, then: tuple[int, int] | None = None) -> None:
        """Score chunk [start, end) of the order and write its part (removing a dead writer's temp file first),
        tokenising chunk ``then`` meanwhile; :meth:`report` then tells the caller."""
        path = part_path(self.parts, start, end)
        for stale in stale_tmp_paths(path):
            stale.unlink(missing_ok=True)  # half-written by a worker that died with this chunk
        chunk, encoded = self._encoded(start, end)
        if self._pool and then:
            self._ahead = (then, self._pool.submit(self._encode, *then))
        table, n_tokens = _score_chunk(self.kind, self.model, self.tokenizer.pad_token_id, chunk, encoded,
                                       self.config)  # fmt: skip
        atomic_write_parquet(path, table)
        self.written += 1
        ranks.maybe_fail(self.written)
        self.scored_here += end - start
        self.tokens += n_tokens

    def report(self) -> None:
        """The pass's progress so far, to ``on_progress``."""
        if self.on_progress:
            n, n_done = len(self.rows), sum(e - s for s, e in done_ranges(self.parts))
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            eta = (n - n_done) * elapsed / self.scored_here
            self.on_progress(PassProgress(done=n_done, total=n, tokens_per_s=self.tokens / elapsed, eta_s=eta))

    def close(self) -> None:
        """Stop the tokenising thread (a chunk it is still on is finished and dropped)."""
        self._ahead = None
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _run_ranked(work: _PassWork, should_stop: Callable[[], bool] | None) -> bool:
    """The pass under a launcher: rank 0 lists the chunks not on disk, each rank scores every world-th of them (no
    lock has to work across nodes; another world size resumes from the same parts), then all meet. True on every
    rank when every chunk is on disk; False on every rank when any of them was stopped."""
    todo = ranks.from_main([r for r in work.ranges if r not in done_ranges(work.parts)])
    mine = ranks.shard(todo)
    stopped = False
    for (start, end), then in zip(mine, [*mine[1:], None]):
        if should_stop and should_stop():
            stopped = True
            break
        work.score(start, end, then)
        work.report()
    if not ranks.all_true(not stopped):
        return False
    missing = ranks.from_main(len(set(work.ranges) - done_ranges(work.parts)))
    if missing:
        raise RuntimeError(f"{missing} chunk(s) of the pass are not on disk after every rank finished its share: "
                           "is the cache on a filesystem every rank sees?")
    return True


def pass_manifest(cache: Cache, key: str) -> dict | None:
    return read_json(cache.pass_dir(key) / "manifest.json")


def fill_pass(cache: Cache, key: str, kind: RowKind, ref: ModelRef, tokenizer, examples, config: PassConfig,
              about: dict, trust_remote_code: bool = False,
              on_progress: Callable[[PassProgress], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> bool:
    """Run, resume or reuse the pass ``key`` of model ``ref`` over ``examples``, keeping its manifest.

    ``about``: what the manifest records besides the model, config and counts (role, dataset, its fingerprint,
    template). Returns False when stopped early (the manifest then still says incomplete). Under a launcher every
    rank calls it together; rank 0 alone writes the manifest."""
    manifest_path = cache.pass_dir(key) / "manifest.json"
    manifest = read_json(manifest_path)
    if ranks.all_true(bool(manifest and manifest.get("complete"))):
        return True
    device = pick_device()
    dtype = pick_dtype(device, config.dtype, cache.root)
    manifest = {"key": key, "kind": kind.name, **about, "model": model_card(ref), "config": fingerprint_fields(config),
                "code_version": kind.code_version, "dtype": dtype_name(dtype), "n_examples": len(examples),
                "complete": False, "created": now()}  # fmt: skip
    main = ranks.current().main
    if main:
        atomic_write_json(manifest_path, manifest)
    model = load_model(ref, device, dtype, trust_remote_code)
    if not run_pass(cache, key, kind, model, tokenizer, examples, config, on_progress, should_stop):
        return False
    manifest.update(complete=True, finished=now())
    if main:
        atomic_write_json(manifest_path, manifest)
    ranks.barrier()  # nobody reads the pass as incomplete once it is done
    return True
