"""The demo dataset: deterministic, its clean answers right (checked by independent code), its defects real;
and the AUROC yardstick agrees with scikit-learn."""
from __future__ import annotations

import datetime
import difflib
import hashlib
import json
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from scoring.ingest.demo import (
    DEFECT_KINDS,
    FAMILIES,
    answers_of,
    generate_demo,
    generate_demo_with_sources,
    generate_heldout,
    write_demo,
    write_heldout,
)
from scoring.passes.generate import answer_correct
from scoring.scores.reports import auroc_by_defect, format_auroc_table, mann_whitney_auroc


@pytest.fixture(scope="module")
def demo():
    return generate_demo_with_sources()


@pytest.fixture(scope="module")
def records(demo):
    return demo[0]


def _clean(records, family=None):
    return [r for r in records if not r["defect"] and (family is None or r["family"] == family)]


def _prompt(r):
    return r["instruction"] + " " + r["input"]


def _ints(text):
    return [int(x) for x in re.findall(r"\d+", text)]


# --------------------------------------------------------------------------- shape and determinism


def test_deterministic_for_a_seed():
    assert generate_demo(seed=3) == generate_demo(seed=3)
    assert generate_demo(seed=3) != generate_demo(seed=4)
    assert generate_demo() == generate_demo(n_clean=240, seed=0)


# sha256 of json.dumps(generate_demo(...)), taken before the task families also returned their answers: the demo
# (and every golden number computed on it) must not move when the generator code changes. Update only with a reason.
DEMO_SHA256 = {
    (240, 0): "58c848e48507292c8c0cffcc517dc979c82a5c445b6240d5b38b7abf8ad16b56",
    (40, 1): "380020cc781b4a8e361cb09a9508c577f10337323c4a6875454c5c062f132b29",
}


@pytest.mark.parametrize("n_clean, seed", sorted(DEMO_SHA256))
def test_the_demo_is_pinned(n_clean, seed):
    text = json.dumps(generate_demo(n_clean=n_clean, seed=seed))
    assert hashlib.sha256(text.encode()).hexdigest() == DEMO_SHA256[(n_clean, seed)]


def test_shape(records):
    assert 280 <= len(records) <= 320
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    assert ids == [f"demo-{i:04d}" for i in range(1, len(ids) + 1)]
    for r in records:
        assert set(r) == {"id", "instruction", "input", "output", "family", "defect"}
        assert all(isinstance(v, str) for v in r.values())
        assert r["instruction"] and r["output"]
        assert r["family"] in FAMILIES
        assert r["defect"] in ("",) + DEFECT_KINDS
    counts = Counter(r["defect"] for r in records)
    assert all(counts[k] >= 5 for k in DEFECT_KINDS), counts
    assert 0.15 <= sum(counts[k] for k in DEFECT_KINDS) / len(records) <= 0.25
    assert {r["family"] for r in _clean(records)} == set(FAMILIES)
    assert min(Counter(r["family"] for r in _clean(records)).values()) >= 20


def test_defects_are_spread_out(records):
    positions = [i for i, r in enumerate(records) if r["defect"]]
    assert positions[0] < len(records) // 4 and positions[-1] > 3 * len(records) // 4


def test_answers_are_short(records):
    lengths = [len(r["output"].split()) for r in records]
    assert max(lengths) <= 20 and np.median(lengths) >= 2


def test_clean_prompts_are_unique(records):
    prompts = [(r["instruction"], r["input"]) for r in _clean(records)]
    assert len(set(prompts)) == len(prompts)


def test_other_sizes():
    small = generate_demo(n_clean=30, seed=1)
    assert Counter(r["defect"] for r in small)["truncated"] >= 1
    large = generate_demo(n_clean=1000, seed=2)
    assert 1240 <= len(large) <= 1260 and sum(not r["defect"] for r in large) == 1000
    with pytest.raises(ValueError):
        generate_demo(n_clean=3)


# --------------------------------------------------------------------------- clean answers are right
# Each check re-derives the answer from the prompt with code independent of the generator.

UNIT_FACTORS = {("kilometres", "metres"): 1000, ("hours", "minutes"): 60, ("minutes", "seconds"): 60,
                ("kilograms", "grams"): 1000, ("metres", "centimetres"): 100, ("days", "hours"): 24,
                ("litres", "millilitres"): 1000}
SOME_CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Canada": "Ottawa", "Australia": "Canberra",
                 "Brazil": "Brasilia", "Kenya": "Nairobi", "Norway": "Oslo", "Peru": "Lima", "Turkey": "Ankara",
                 "Switzerland": "Bern", "Nigeria": "Abuja", "India": "New Delhi"}
KNOWN_FORMS = {"city": "cities", "box": "boxes", "church": "churches", "key": "keys", "cat": "cats",
               "bus": "buses", "carry": "carried", "dance": "danced", "play": "played", "walk": "walked",
               "study": "studied", "enjoy": "enjoyed", "use": "used"}
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def check_arithmetic(r):
    m = re.search(r"(\d+) ([+\-×]) (\d+) = (\d+)", r["output"])
    a, op, b, result = int(m[1]), m[2], int(m[3]), int(m[4])
    assert _ints(_prompt(r)) == [a, b]
    assert result == {"+": a + b, "-": a - b, "×": a * b}[op]
    word = re.search(r"plus|minus|times|[+\-×]", _prompt(r))[0]
    assert {"plus": "+", "minus": "-", "times": "×"}.get(word, word) == op


def check_unit_conversion(r):
    (_src, dst), factor = next(((s, d), f) for (s, d), f in UNIT_FACTORS.items()
                              if re.search(rf"\b{d}\b", r["instruction"]) and re.search(rf"\d {s}\b", _prompt(r)))
    value = float(re.search(r"\d+(?:\.\d+)?", _prompt(r))[0])
    assert float(re.findall(r"\d+(?:\.\d+)?", r["output"])[-1]) == value * factor
    assert r["output"].rstrip(".").endswith(dst)


def check_reverse_word(r):
    word = (re.findall(r"'([a-z]+)'", r["instruction"]) or [r["input"]])[0]
    answer = (re.findall(r"'([a-z]+)'", r["output"]) or [r["output"]])[-1]
    assert answer == "".join(reversed(word)) and answer != word


def check_count_letters(r):
    quoted = re.findall(r"'([a-z]+)'", r["instruction"])
    word = r["input"] or quoted[-1]
    count = _ints(r["output"])[-1]
    if "vowel" in r["instruction"]:
        assert count == len([ch for ch in word if ch in "aeiou"])
    else:
        assert count == len([ch for ch in word if ch == quoted[0]])
    assert ("1 time" in r["output"] or "1 vowel" in r["output"]) == (count == 1)


def check_sort_numbers(r):
    given, answer = _ints(_prompt(r)), _ints(r["output"])
    descending = "largest to smallest" in r["instruction"] or "descending" in r["instruction"]
    assert answer == sorted(given, reverse=descending) and len(set(given)) == len(given) >= 4


def check_capital(r):
    country = r["input"] or re.search(r"of ([A-Z][A-Za-z ]+?)[.?]$", r["instruction"])[1]
    if country in SOME_CAPITALS:
        assert SOME_CAPITALS[country] in r["output"]
    else:
        assert re.fullmatch(r"[A-Z][A-Za-z ]+\.|.*\b" + re.escape(country) + r"\b.*", r["output"])


def check_word_form(r):
    word = r["input"] or re.findall(r"'([a-z]+)'", r["instruction"])[0]
    answer = (re.findall(r"'([a-z]+)'", r["output"]) or [r["output"]])[-1]
    if word in KNOWN_FORMS:
        assert answer == KNOWN_FORMS[word]
    assert answer.startswith(word[:-1]) and answer.endswith(("s", "d"))


def check_compare_numbers(r):
    a, b = _ints(_prompt(r))
    larger = "larger" in r["instruction"]
    stated = _ints(r["output"])[0]
    assert stated == (max(a, b) if larger else min(a, b))


def check_day_of_week(r):
    day = next(d for d in WEEKDAYS if d in r["instruction"])
    n = _ints(r["instruction"])[0]
    start = datetime.date(2024, 1, 1) + datetime.timedelta(days=WEEKDAYS.index(day))  # 2024-01-01 was a Monday
    later = "after" in r["instruction"] or "will" in r["instruction"]
    expected = (start + datetime.timedelta(days=n if later else -n)).strftime("%A")
    assert start.strftime("%A") == day
    assert r["output"].rstrip(".").split()[-1] == expected


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def test_every_family_has_a_check():
    assert set(CHECKS) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_clean_answers_are_correct(records, demo, family):
    rows = _clean(records, family)
    assert rows
    for r in rows:
        CHECKS[family](r)
    # the hidden sources that defects were made from are right too
    for src in demo[1].values():
        if src["family"] == family:
            CHECKS[family](src)


def test_phrasing_varies(records):
    for family in FAMILIES:
        rows = _clean(records, family)
        templates = {re.sub(r"\d+|'[a-z]+'|[A-Z][a-z]+day", "#", r["instruction"]) for r in rows}
        assert len(templates) >= 2, family
        assert len({re.sub(r"[\d.]+", "#", r["output"])[:8] for r in rows}) >= 2, family


# --------------------------------------------------------------------------- held-out tasks


def _content(r) -> tuple:
    """What a task asks about, read back from its prompt (the generator's semantic key, derived independently)."""
    fam, ins, p = r["family"], r["instruction"], _prompt(r)
    quoted = re.findall(r"'([a-z]+)'", ins)
    word = r["input"] if re.fullmatch(r"[a-z]+", r["input"]) else quoted[-1] if quoted else ""
    if fam == "arithmetic":
        return fam, *_ints(p), re.search(r"plus|minus|times|[+\-×]", p)[0].replace("plus", "+").replace(
            "minus", "-").replace("times", "×")  # fmt: skip
    if fam == "unit_conversion":
        return fam, re.search(r"(\d+(?:\.\d+)?) ([a-z]+)", p).groups()
    if fam == "count_letters":
        return fam, "vowels" if "vowel" in ins else quoted[0], word
    if fam == "sort_numbers":
        return fam, tuple(_ints(p)), "largest to smallest" in ins or "descending" in ins
    if fam == "capital":
        return fam, r["input"] or re.search(r"of ([A-Z][A-Za-z ]+?)[.?]$", ins)[1]
    if fam == "word_form":
        return fam, "plural" in ins, word
    if fam == "compare_numbers":
        return fam, frozenset(_ints(p)), "larger" in ins
    if fam == "day_of_week":
        return fam, next(d for d in WEEKDAYS if d in ins), *_ints(ins), "after" in ins or "will" in ins
    return fam, word  # reverse_word


@pytest.fixture(scope="module")
def heldout():
    return generate_heldout()


def test_heldout_records(heldout):
    assert [r["id"] for r in heldout] == [f"heldout-{i:04d}" for i in range(1, 91)]
    for r in heldout:
        assert set(r) == {"id", "instruction", "input", "output", "family", "answer"}
        assert all(isinstance(v, str) and v == v.strip() for v in r.values())
        assert r["answer"] and r["instruction"] and r["output"]
        CHECKS[r["family"]](r)  # the output is right, checked independently
    assert Counter(r["family"] for r in heldout) == {family: 10 for family in FAMILIES}
    assert len({r["family"] for r in heldout[:30]}) >= 6  # shuffled, not one family after another


def test_heldout_is_deterministic():
    assert generate_heldout() == generate_heldout(n=90, seed=1, exclude_seed=0, exclude_n_clean=240)
    assert generate_heldout(seed=2) != generate_heldout(seed=1)
    assert len(generate_heldout(n=20, seed=3)) == 20


@pytest.mark.parametrize("n_clean, seed", [(240, 0), (40, 1)])
def test_heldout_never_in_the_demo(n_clean, seed):
    held = generate_heldout(n=45, seed=7, exclude_seed=seed, exclude_n_clean=n_clean)
    demo_rows, sources = generate_demo_with_sources(n_clean, seed)
    in_demo = demo_rows + list(sources.values())  # the tasks defects were made from count too
    assert not {_content(r) for r in held} & {_content(r) for r in in_demo}
    assert not {(r["instruction"], r["input"]) for r in held} & {(r["instruction"], r["input"]) for r in in_demo}
    assert len({_content(r) for r in held}) == len({(r["instruction"], r["input"]) for r in held}) == len(held)


def test_every_family_answer_is_in_its_output():
    rows = [r for seed in range(1, 6) for r in generate_heldout(seed=seed)]
    for family in FAMILIES:
        mine = [r for r in rows if r["family"] == family]
        assert len(mine) == 50 and len({r["answer"] for r in mine}) >= 3, family
        for r in mine:
            assert r["answer"] in r["output"] and answer_correct(r["output"], r["answer"]), r
            assert not answer_correct(r["output"], r["answer"] + "0"), r  # and only the answer


def test_heldout_runs_out_with_a_clear_error():
    with pytest.raises(ValueError, match="ran out of capital tasks"):
        generate_heldout(n=len(FAMILIES) * 40)


def test_write_heldout_and_answers_of(tmp_path):
    path = write_heldout(tmp_path / "h" / "held.jsonl", n=18, seed=4)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows == generate_heldout(n=18, seed=4)
    originals = [json.dumps(r, ensure_ascii=False) for r in rows]
    frame = pd.DataFrame({"original": originals + ['{"output": "x"}', '{"answer": 12}', "not json", "[1, 2]", None]})
    assert answers_of(frame) == [r["answer"] for r in rows] + [None, "12", None, None, None]


# --------------------------------------------------------------------------- defects are defects


def _by_kind(records, kind):
    rows = [r for r in records if r["defect"] == kind]
    assert len(rows) >= 5
    return rows


def test_every_defect_has_a_source(demo):
    records, sources = demo
    assert set(sources) == {r["id"] for r in records if r["defect"]}
    for r in records:
        if r["defect"] and r["defect"] != "near_duplicate":
            src = sources[r["id"]]
            assert (src["instruction"], src["input"], src["family"]) == (r["instruction"], r["input"], r["family"])


def test_wrong_number(demo):
    records, sources = demo
    for r in _by_kind(records, "wrong_number"):
        right = sources[r["id"]]["output"]
        assert r["output"] != right
        assert re.sub(r"\d+", "#", r["output"]) == re.sub(r"\d+", "#", right)  # only a number changed
        if r["family"] == "arithmetic":
            with pytest.raises(AssertionError):
                check_arithmetic(r)


def test_truncated(demo):
    records, sources = demo
    for r in _by_kind(records, "truncated"):
        right = sources[r["id"]]["output"]
        assert right.startswith(r["output"]) and r["output"] != right
        assert 0.3 * len(right) - 1 <= len(r["output"]) <= 0.5 * len(right) + 1
        assert not r["output"][-1].isspace()


def test_gibberish(demo):
    records, sources = demo
    real_words = {w for r in _clean(records) for w in re.findall(r"[A-Za-z]{4,}", r["output"])}
    for r in _by_kind(records, "gibberish"):
        assert r["output"] != sources[r["id"]]["output"]
        assert difflib.SequenceMatcher(None, r["output"], sources[r["id"]]["output"]).ratio() < 0.7
    assert any(not set(re.findall(r"[A-Za-z]{4,}", r["output"])) & real_words for r in _by_kind(records, "gibberish"))


def test_swapped_answer(demo):
    records, sources = demo
    clean_by_output = {}
    for r in _clean(records):
        clean_by_output.setdefault(r["output"], set()).add(r["family"])
    for r in _by_kind(records, "swapped_answer"):
        assert r["output"] in clean_by_output
        assert r["family"] not in clean_by_output[r["output"]]
        assert r["output"] != sources[r["id"]]["output"]


def test_exact_duplicate(demo):
    records, sources = demo
    clean_ids = {r["id"]: r for r in _clean(records)}
    for r in _by_kind(records, "exact_duplicate"):
        base = clean_ids[sources[r["id"]]["id"]]
        assert base["id"] != r["id"]
        assert (base["instruction"], base["input"], base["output"], base["family"]) == (
            r["instruction"], r["input"], r["output"], r["family"])


def test_near_duplicate(demo):
    records, sources = demo
    clean = {r["id"]: r for r in _clean(records)}
    triples = {(r["instruction"], r["input"], r["output"]) for r in clean.values()}
    for r in _by_kind(records, "near_duplicate"):
        base = clean[sources[r["id"]]["id"]]
        assert (r["instruction"], r["input"], r["output"]) not in triples
        a, b = _prompt(base) + " " + base["output"], _prompt(r) + " " + r["output"]
        assert a != b and difflib.SequenceMatcher(None, a, b).ratio() > 0.8
        assert r["input"] == base["input"] and r["family"] == base["family"]


def test_duplicates_use_distinct_clean_rows(demo):
    records, sources = demo
    bases = [sources[r["id"]]["id"] for r in records if r["defect"] in ("exact_duplicate", "near_duplicate")]
    assert len(set(bases)) == len(bases)


# --------------------------------------------------------------------------- AUROC


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import (
        roc_auc_score,  # imported here: it alone takes most of this file's run time
    )

    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(5, 80))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = rng.integers(0, 6, n).astype(float) if trial % 2 else rng.normal(size=n)
        ours = mann_whitney_auroc(s[y == 1], s[y == 0])
        assert ours == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_by_defect_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    labels = list(rng.choice(["", "", "", "truncated", "gibberish", "wrong_number"], 200))
    score = np.round(rng.normal(size=200), 1)  # rounding makes ties
    score[::17] = np.nan
    table = auroc_by_defect(labels, {"s": score})["s"]
    lab = np.array(labels)
    for kind in ("truncated", "gibberish", "wrong_number"):
        keep = ((lab == "") | (lab == kind)) & ~np.isnan(score)
        assert table[kind] == pytest.approx(roc_auc_score(lab[keep] == "", score[keep]))
    keep = ~np.isnan(score)
    assert table["any"] == pytest.approx(roc_auc_score(lab[keep] == "", score[keep]))


def test_auroc_constructed_cases():
    labels = ["", "", "", "gibberish", "gibberish", "truncated", "truncated"]
    table = auroc_by_defect(labels, {
        "good": [5, 6, 7, 1, 2, 3, 4],
        "backwards": [1, 2, 3, 5, 6, 7, 8],
        "flat": [1.0] * 7,
        "mixed": [2, 4, 6, 1, 3, 7, 8],
    })
    assert table["good"]["gibberish"] == table["good"]["truncated"] == table["good"]["any"] == 1.0
    assert table["backwards"]["any"] == 0.0
    assert table["flat"]["gibberish"] == table["flat"]["any"] == 0.5
    assert table["mixed"]["gibberish"] == pytest.approx(5 / 6) and table["mixed"]["truncated"] == 0.0
    for row in table.values():
        assert list(row) == list(DEFECT_KINDS) + ["any"]
        assert row["exact_duplicate"] is None and row["swapped_answer"] is None  # kinds with no rows


def test_auroc_nan_and_missing():
    labels = ["", "", "truncated", "truncated", "odd_kind"]
    table = auroc_by_defect(labels, {"s": [1.0, float("nan"), 0.5, float("nan"), 2.0], "none": [None] * 5})
    assert table["s"]["truncated"] == 1.0  # the NaN rows are skipped
    assert table["s"]["odd_kind"] == 0.0  # labels outside DEFECT_KINDS get a column too
    assert table["s"]["any"] == 0.5
    assert all(v is None for v in table["none"].values())  # every score NaN
    no_clean = auroc_by_defect(["truncated", "gibberish"], {"s": [1.0, 2.0]})["s"]
    assert all(v is None for v in no_clean.values())
    assert mann_whitney_auroc([], [1.0]) is None
    with pytest.raises(ValueError):
        auroc_by_defect(["", "truncated"], {"s": [1.0]})


def test_format_auroc_table():
    table = {"davir": {"truncated": 0.91234, "gibberish": None, "any": 0.5},
             "ifd_long_name": {"truncated": 0.1, "gibberish": 1.0, "any": float("nan")}}
    text = format_auroc_table(table)
    lines = text.splitlines()
    assert lines[0].split() == ["score", "truncated", "gibberish", "any"]
    assert lines[2].split() == ["davir", "0.91", "-", "0.50"]
    assert lines[3].split() == ["ifd_long_name", "0.10", "1.00", "-"]
    assert len({len(line) for line in lines}) == 1  # aligned (right-justified numbers end together)
    assert format_auroc_table({}) == "(no scores)"


def test_table_on_demo_labels(records):
    labels = [r["defect"] for r in records]
    oracle = [0.0 if r["defect"] else 1.0 for r in records]
    length = [len(r["output"]) for r in records]
    table = auroc_by_defect(labels, {"oracle": oracle, "length": length})
    assert all(v == 1.0 for v in table["oracle"].values())
    assert table["length"]["truncated"] > 0.8  # a cut answer is shorter than the rest
    assert "oracle" in format_auroc_table(table)


# --------------------------------------------------------------------------- writing


def test_write_demo(tmp_path):
    path = write_demo(tmp_path / "sub" / "demo.jsonl", n_clean=60, seed=5)
    assert path == tmp_path / "sub" / "demo.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == generate_demo(n_clean=60, seed=5)
    assert "×" in path.read_text(encoding="utf-8")  # ensure_ascii=False keeps the times sign readable
