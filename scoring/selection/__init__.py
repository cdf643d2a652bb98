"""Stage 6, selection: from a score table to the kept ids and a reason for every dropped one.

- :mod:`~scoring.selection.rules`: budgets, rules and the result type
- :mod:`~scoring.selection.engine`: the selection itself (percentiles, combining scores, the budget)
- :mod:`~scoring.selection.goodness`: each rule (top, bottom, band, above, below, band-values) as goodness,
  exclusions and drop-reason labels
- :mod:`~scoring.selection.table`: a score table prepared for repeated selections (SelectTable)
- :mod:`~scoring.selection.ranking`: ranks and partial sorts (numpy)
- :mod:`~scoring.selection.groups`: quotas and the near-duplicate walk
- :mod:`~scoring.selection.saved`: the rule spec the CLI and the app share, saving a spec, comparisons
- :mod:`~scoring.selection.files`: saved selections on disk (write, read, list, delete)
- :mod:`~scoring.selection.explain`: why each row went (a row's reason in words) and kept rows per quota group
- :mod:`~scoring.selection.pairs`: the LossDiff-IRM band rule for preference pairs
- :mod:`~scoring.selection.influence`: how well the pair scores agree with IF (Spearman, overlap with TIF, auto band)
- :mod:`~scoring.selection.evaluation`: an evaluation's arms (random subsets matched in size and tokens, the rule
  turned over) and the paired bootstrap of selection − random with its verdict
"""
