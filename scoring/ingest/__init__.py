"""Stage 1, ingest: a source (files, a ``save_to_disk`` folder or a hub id) -> the examples table of a dataset.

sources (read records) -> turns (fields as text and chat turns) -> layouts | pairs (one record as a row of its
kind) -> tables (ids, duplicate flags, fingerprint) -> catalog (``ingest``, the dataset catalog). ``demo`` makes
datasets with planted, labelled defects.
"""
