"""Helpers shared by the CLI-driven tests."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

from scoring import cli


def run(*argv: str) -> tuple[int, str, str]:
    """``cli.main(argv)`` in this process: (exit code, stdout, stderr). argparse exits become the code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def ok(*argv: str) -> str:
    code, out, err = run(*argv)
    assert code == 0, f"{argv} exited {code}:\n{out}\n{err}"
    return out


APP = str(Path(__file__).resolve().parent.parent / "app.py")


def open_app(page: str | None = None, query: dict | None = None):
    """An AppTest of app.py (cache from $DAVIR_CACHE), optionally switched to ``pages/{page}.py``; fails on any
    exception the app raised."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query or {})
    at.run()
    assert not at.exception, at.exception[0].value
    if page:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, at.exception[0].value
    return at


# ---------------------------------------------------------------- a cache with finished evaluations

PLANTED_N_CLEAN, PLANTED_N_BAD, PLANTED_N_KEPT = 32, 32, 12
PLANTED_LR = 3e-3  # a tiny random model needs a high rate to learn anything in a few steps
PLANTED_SWEEP = ("10%", "25%")


def planted_rows(n_clean: int, n_bad: int, seed: int, prefix: str) -> list[dict]:
    """Clean rows answer with one fixed pattern; bad rows with random letters (the planted bad half)."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n_clean + n_bad):
        clean = i < n_clean
        answer = "The answer is yes, 42." if clean else "".join(rng.choice("qxzjvkw ") for _ in range(24))
        rows.append({"id": f"{prefix}-{i:03d}", "instruction": f"Question {i}: what is it?", "input": "",
                     "output": answer, "defect": "" if clean else "gibberish"})  # fmt: skip
    rng.shuffle(rows)
    return rows


def build_planted(cache, root: Path, model: Path):
    """In ``cache``: the planted dataset "planted" (half clean, half gibberish), its eval set "planted-test", a
    finished ppl score job (returned), and the saved selection "clean" (12 clean rows, rule bottom ppl at budget
    "12")."""
    import json

    from scoring.ingest import catalog
    from scoring.jobs import runner
    from scoring.jobs.requests import score_request
    from scoring.passes.engine import PassConfig
    from scoring.selection.rules import DroppedReasons, SelectionResult
    from scoring.selection.saved import save_selection

    train, test = root / "train.json", root / "test.json"
    rows = planted_rows(PLANTED_N_CLEAN, PLANTED_N_BAD, 0, "tr")
    train.write_text(json.dumps(rows))
    test.write_text(json.dumps(planted_rows(16, 0, 1, "te")))
    catalog.ingest(str(train), cache, name="planted", progress=False)
    catalog.ingest(str(test), cache, name="planted-test", progress=False)
    config = PassConfig(chunk_size=16, dtype="fp32", embed=False, max_length=96)
    score = runner.run(cache, runner.enqueue(cache, score_request(cache, "planted", str(model), ["ppl"], config))[0].id)
    assert score.state == "done", score.error
    clean = sorted(r["id"] for r in rows if not r["defect"])[:PLANTED_N_KEPT]
    others = sorted(r["id"] for r in rows if r["id"] not in clean)
    result = SelectionResult(kept_ids=clean, dropped=DroppedReasons(others, ["below_cut"] * len(others)),
                             n_total=len(rows), tokens_kept=0)  # fmt: skip
    spec = {"dataset": "planted", "scores": ["ppl"], "rule": "bottom", "rules": ["bottom"], "combine": "and",
            "budget": str(PLANTED_N_KEPT), "include_flagged": False, "quota": None, "dedup": None, "runs": [score.id]}
    save_selection(cache, "planted", "clean", result, spec)
    return score


def build_planted_evaluations(root: Path, model: Path) -> dict:
    """A cache under ``root`` with :func:`build_planted`'s contents and two finished evaluations of "clean", run
    here (CPU, one epoch): a plain one (random with 2 seeds, full) and the sweep of its rule at 10 % and 25 % (random
    with 1 seed, full). Returns the cache root and the job ids."""
    from scoring.jobs import runner
    from scoring.jobs.evaluate import evaluate_request
    from scoring.store.cache import Cache

    cache = Cache(root / "cache")
    score = build_planted(cache, root, model)
    common = {"against": ["random", "full"], "evals": ["planted-test"], "epochs": 1, "lr": PLANTED_LR}
    ids = {}
    for name, request in (("plain", evaluate_request(cache, "planted", "clean", seeds=2, **common)),
                          ("sweep", evaluate_request(cache, "planted", rule_of="clean", budgets=list(PLANTED_SWEEP),
                                                     seeds=1, **common))):  # fmt: skip
        job = runner.run(cache, runner.enqueue(cache, request)[0].id)
        assert job.state == "done", job.error
        ids[name] = job.id
    return {"root": cache.root, "score": score.id, **ids}
