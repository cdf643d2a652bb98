"""Stage 2, models: which model a name means, its fingerprint, loading it, and how conversations become tokens.

- :mod:`~scoring.models.loading`: resolve a name (the embedded default, a folder, a hub id), fingerprint its
  weights, load model and tokenizer, pick device and dtype
- :mod:`~scoring.models.formatting`: chat templates and the plain template; which tokens are scored, for an
  instruction example (every assistant turn) and for one side of a preference pair (the final reply)
"""
