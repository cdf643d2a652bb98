"""Stage 9, queries: what the app reads, as small frames computed next to the data. Never imports streamlit.

- :mod:`~scoring.queries.view`: distributions, table pages, one example, neighbours, the map -- any dataset kind
- :mod:`~scoring.queries.tokens`: per-token views of one example (instruction data and preference pairs)
- :mod:`~scoring.queries.pairs`: the Pairs page (margins, the LossDiff-IRM band, one pair)
- :mod:`~scoring.queries.influence`: the Pairs page's warm-up report and influence check
- :mod:`~scoring.queries.evaluate`: the Evaluate page (arms, comparisons, the sweep) and the Select page's verdict
- :mod:`~scoring.queries.jobs`: the progress banner and job logs
"""
