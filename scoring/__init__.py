"""DavIR Studio's engine: score training examples by how much a model learns from them, select, export.

The data flows left to right, one subpackage per stage, each importing only from the stages to its left and from
the common base (:mod:`~scoring.errors`, :mod:`~scoring.env`, :mod:`~scoring.schema`, :mod:`~scoring.store`)::

    ingest -> models -> passes -> train -> scores -> selection -> export -> jobs -> queries -> api -> cli

The Python API (the same calls the CLI makes; see :mod:`scoring.api`)::

    import scoring

    scoring.ingest("../shared/data/gsm8k/train.jsonl", limit=200)
    scoring.score("gsm8k-train")
    scoring.scores("gsm8k-train")                      # a DataFrame: one row per example, every score
    scoring.select("gsm8k-train", scores=["davir"], budget="6%", save="top6")
    scoring.export("gsm8k-train", "top6", format="jsonl")
    scoring.influence("hh-pairs", sample=128)          # preference pairs: the scores against IF
    scoring.evaluate("gsm8k-train", "top6", evals=["gsm8k-test"])  # does the cut help? selection vs random vs full
"""
from scoring.env import bound_kernel_caches

bound_kernel_caches()  # before any model runs: memory bounded by the configuration, not the shapes of the data

from scoring.api import evaluate, export, influence, ingest, open_cache, score, scores, select  # noqa: E402

__all__ = ["evaluate", "export", "influence", "ingest", "open_cache", "score", "scores", "select"]
