"""The cache folder and how it is written: the common base every stage stands on.

- :mod:`~scoring.store.cache`: paths inside the cache root and atomic (temp-then-rename) writes
- :mod:`~scoring.store.claims`: flock claims on jobs and chunks
- :mod:`~scoring.store.parts`: a pass's immutable Parquet parts and reading them through DuckDB
- :mod:`~scoring.store.jobs`: job records (the typed :class:`~scoring.store.jobs.Job`) as JSON files

Why store sits under every stage and not between scores and selection (as first sketched): ingest, passes,
training and selection all write into the cache, and they can only do it through one module that owns the
write-then-rename contract.
"""
