"""Stage 8, jobs: typed requests, the steps a score job runs for either dataset kind, the runner and the worker.

- :mod:`~scoring.jobs.requests`: building a :class:`~scoring.store.jobs.Job` request (its id is its fingerprint)
- :mod:`~scoring.jobs.steps`: fill a pass, train a model, with the job's progress (shared by both kinds)
- :mod:`~scoring.jobs.score` / :mod:`~scoring.jobs.pairs`: the stages of an instruction / a preference-pair job
- :mod:`~scoring.jobs.influence`: the influence check of a pair job (IF on a sample, the agreement report)
- :mod:`~scoring.jobs.evaluate` / :mod:`~scoring.jobs.measure`: the evaluation job (train one model per arm, measure
  each on the eval sets, compare selection − random) and what a model scores on an eval set
- :mod:`~scoring.jobs.memory`: the worker's memory now and each step's peak; the heap kept from fragmenting
- :mod:`~scoring.jobs.runner`: enqueue, run (owning the job's flock), cancel
- :mod:`~scoring.jobs.worker`: background workers
"""
