"""Stage 5, scores: from loss tables to per-example scores, reports, the embedding map and materialised views.

- :mod:`~scoring.scores.registry`: the registry of score functions, per dataset kind; :mod:`~scoring.scores.sft`
  and :mod:`~scoring.scores.pairs` register theirs when this package is imported
- :mod:`~scoring.scores.tables`: the loss table and the score table of a job, one dispatch on the dataset kind
- :mod:`~scoring.scores.reports`: AUROC on labelled defects, proxy rank agreement, flag counts
- :mod:`~scoring.scores.embedding_map`: the 2-D UMAP map of the base pass's embeddings
- :mod:`~scoring.scores.views`: a job's score table materialised once to Parquet, for the app and selections
"""
from scoring.scores import pairs, sft  # noqa: F401  (registers every score)
