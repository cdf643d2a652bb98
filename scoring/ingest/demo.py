"""Data with planted, labelled defects: a generated instruction dataset, and preference pairs with swapped sides.

Why: to know whether a score (davir, ifd, ppl, ...) singles out bad training examples we need examples whose badness
is known. ``generate_demo`` writes ~300 short Alpaca-style tasks whose answers are *computed* here (so the clean ones
are right), then plants defects on top of them, each row labelled in ``defect``:

    swapped_answer   the answer of another example, from a different task family
    wrong_number     the correct answer with its number changed (text otherwise identical)
    truncated        the answer cut off 30-50 % of the way in, mid-word
    gibberish        random letter strings, or the answer's characters shuffled
    exact_duplicate  a copy of a clean row under a new id
    near_duplicate   a clean row with a trivial edit (case, spacing, punctuation, a synonym)

Answers are short (mostly 5-60 tokens) so a ~135M-parameter model scores the set on 2 CPU cores in minutes.
``write_planted_pairs`` does the same for preference pairs: chosen and rejected swapped in a labelled share.
(:func:`scoring.scores.reports.auroc_by_defect` reports, per score and defect kind, how well a score ranks defect
rows below clean ones.) ``generate_heldout`` draws clean tasks the demo never contains, each with its computed short
``answer`` (read back after ingest by ``answers_of``), to measure accuracy on (:mod:`scoring.passes.generate`).
Deterministic for a seed: one ``random.Random(seed)``, no clocks, no global random state.
"""
from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from scoring.errors import UserError
from scoring.ingest.pairs import detect_pair_layout
from scoring.ingest.sources import read_records, record_columns, resolve_source

if TYPE_CHECKING:
    import pandas as pd

DEFECT_KINDS: tuple[str, ...] = (
    "swapped_answer", "wrong_number", "truncated", "gibberish", "exact_duplicate", "near_duplicate",
)
FAMILIES: tuple[str, ...] = (
    "arithmetic", "unit_conversion", "reverse_word", "count_letters", "sort_numbers",
    "capital", "word_form", "compare_numbers", "day_of_week",
)
# Families whose answer carries a computed number that ``wrong_number`` can change.
NUMERIC_FAMILIES: tuple[str, ...] = ("arithmetic", "unit_conversion", "count_letters", "sort_numbers")
DEFECT_SHARE = 0.2  # defects as a share of the final dataset

WORDS = ("planet", "garden", "banana", "window", "pencil", "rocket", "silver", "turtle", "candle", "forest", "monkey", "yellow", "bridge", "castle", "dragon", "engine", "guitar", "island", "jacket", "kitten", "lemon", "market", "napkin", "orange", "pepper", "rabbit", "summer", "tomato", "violin", "winter", "anchor", "basket", "cheese", "dinner", "finger", "hammer", "ladder", "mirror", "needle", "pillow", "puzzle", "saddle", "travel", "button", "coffee", "letter", "doctor", "spider", "shadow", "camera", "apple", "cloud", "horse", "music", "ocean", "paper", "river", "stone", "table", "water")
PLURAL_NOUNS = ("cat", "dog", "book", "tree", "house", "pencil", "river", "lamp", "window", "garden", "car", "bird", "box", "fox", "tax", "bus", "glass", "church", "brush", "bench", "dish", "match", "wish", "watch", "city", "baby", "party", "lady", "story", "puppy", "cherry", "key", "day", "toy", "boy", "valley")
PAST_VERBS = ("walk", "talk", "jump", "play", "cook", "clean", "open", "visit", "listen", "answer", "help", "call", "paint", "rain", "finish", "wash", "look", "start", "want", "climb", "kick", "push", "pull", "ask", "dance", "smile", "bake", "move", "love", "close", "hope", "like", "use", "carry", "study", "cry", "try", "hurry", "enjoy", "stay", "marry", "copy")  # regular verbs that never double their last consonant
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
    "Peru": "Lima", "Chile": "Santiago", "Australia": "Canberra", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Austria": "Vienna",
    "Greece": "Athens", "Ireland": "Dublin", "Russia": "Moscow", "Turkey": "Ankara", "Iran": "Tehran",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "Indonesia": "Jakarta", "South Korea": "Seoul",
    "Nigeria": "Abuja", "Ghana": "Accra", "Ethiopia": "Addis Ababa", "Morocco": "Rabat", "Cuba": "Havana",
    "Colombia": "Bogota", "Hungary": "Budapest", "Belgium": "Brussels", "Netherlands": "Amsterdam",
    "Switzerland": "Bern", "Czechia": "Prague", "Romania": "Bucharest", "Philippines": "Manila",
}
UNITS = (  # (from, to, factor); every factor is even, so half-unit values convert to whole numbers
    ("kilometres", "metres", 1000), ("hours", "minutes", 60), ("minutes", "seconds", 60),
    ("kilograms", "grams", 1000), ("metres", "centimetres", 100), ("days", "hours", 24),
    ("litres", "millilitres", 1000),
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
VOWELS = "aeiou"
SYNONYMS = (("What is", "What's"), ("Give", "Provide"), ("Write", "Type"), ("Convert", "Change"),
            ("Sort", "Order"), ("Count", "Tally"), ("larger", "bigger"), ("smaller", "lesser"), ("Name", "State"))

Example = tuple[tuple, str, str, str, str]  # (semantic key, instruction, input, output, short answer)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# --------------------------------------------------------------------------- task families
# Each returns (key, instruction, input, output, answer): the key names the task's content (no two rows ask the same
# thing); the answer is the computed short result every phrasing of the output contains.


def _arithmetic(rng: random.Random) -> Example:
    op = rng.choice("+-×")
    if op == "+":
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        r = a + b
    elif op == "-":
        a = rng.randint(20, 999)
        b = rng.randint(10, a - 1)
        r = a - b
    else:
        a, b = rng.randint(11, 99), rng.randint(2, 19)
        r = a * b
    word = {"+": "plus", "-": "minus", "×": "times"}[op]
    expr = f"{a} {op} {b}"
    ins, inp = rng.choice([(f"What is {a} {word} {b}?", ""), (f"Compute {expr}.", ""),
                           ("Evaluate the expression.", expr), ("Work out the result of this calculation.", expr)])
    out = rng.choice([f"{expr} = {r}.", f"{expr} = {r}", f"Answer: {expr} = {r}."])
    return ("arithmetic", a, op, b), ins, inp, out, str(r)


def _unit_conversion(rng: random.Random) -> Example:
    src, dst, factor = rng.choice(UNITS)
    halves = rng.choice([h for h in range(3, 81) if h % 2 or h > 12])  # 1.5 .. 40, whole numbers above 6
    value = str(halves // 2) if halves % 2 == 0 else f"{halves // 2}.5"
    r = halves * factor // 2
    ins, inp = rng.choice([(f"Convert {value} {src} to {dst}.", ""), (f"How many {dst} are in {value} {src}?", ""),
                           (f"Convert this amount to {dst}.", f"{value} {src}")])
    out = rng.choice([f"{value} {src} = {r} {dst}.", f"{value} {src} is {r} {dst}.", f"That is {r} {dst}."])
    return ("unit", src, halves), ins, inp, out, str(r)


def _reverse_word(rng: random.Random) -> Example:
    w = rng.choice(WORDS)
    rev = w[::-1]
    ins, inp = rng.choice([(f"Reverse the word '{w}'.", ""), (f"Write '{w}' backwards.", ""),
                           ("Spell the given word in reverse order.", w), (f"What is '{w}' spelled backwards?", "")])
    out = rng.choice([f"'{w}' reversed is '{rev}'.", f"The word spelled backwards is '{rev}'.", rev])
    return ("reverse", w), ins, inp, out, rev


def _count_letters(rng: random.Random) -> Example:
    w = rng.choice(WORDS)
    if rng.random() < 0.4:
        n = sum(ch in VOWELS for ch in w)
        ins, inp = rng.choice([(f"How many vowels are in the word '{w}'?", ""),
                               ("Count the vowels (a, e, i, o, u) in this word.", w)])
        out = rng.choice([f"'{w}' has {_n(n, 'vowel')}.", f"The word '{w}' contains {_n(n, 'vowel')}."])
        return ("count", "vowels", w), ins, inp, out, str(n)
    c = rng.choice(w) if rng.random() < 0.85 else rng.choice([ch for ch in "bdfgkmpstwz" if ch not in w] or ["q"])
    n = w.count(c)
    ins, inp = rng.choice([(f"How many times does the letter '{c}' appear in '{w}'?", ""),
                           (f"Count the occurrences of '{c}' in the word '{w}'.", ""),
                           (f"How many times does '{c}' occur in the word below?", w)])
    out = rng.choice([f"The letter '{c}' appears {_n(n, 'time')} in '{w}'.", f"'{w}' contains '{c}' {_n(n, 'time')}."])
    return ("count", c, w), ins, inp, out, str(n)


def _sort_numbers(rng: random.Random) -> Example:
    nums = rng.sample(range(1, 100), rng.randint(4, 7))
    desc = rng.random() < 0.35
    shown, ordered = ", ".join(map(str, nums)), ", ".join(map(str, sorted(nums, reverse=desc)))
    way = "from largest to smallest" if desc else "from smallest to largest"
    ins, inp = rng.choice([(f"Sort these numbers {way}.", shown), (f"Sort {shown} {way}.", ""),
                           (f"Put the following numbers in {'descending' if desc else 'ascending'} order.", shown)])
    out = rng.choice([ordered, f"Sorted: {ordered}.", f"In order: {ordered}."])
    return ("sort", tuple(nums), desc), ins, inp, out, ordered


def _capital(rng: random.Random) -> Example:
    country = rng.choice(sorted(CAPITALS))
    city = CAPITALS[country]
    ins, inp = rng.choice([(f"What is the capital of {country}?", ""), (f"Name the capital city of {country}.", ""),
                           ("Give the capital of this country.", country)])
    out = rng.choice([f"The capital of {country} is {city}.", f"{city} is the capital of {country}.", f"{city}."])
    return ("capital", country), ins, inp, out, city


def plural(noun: str) -> str:
    """Regular English plural: -es after s/x/z/ch/sh, -ies after consonant + y, else -s."""
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in VOWELS:
        return noun[:-1] + "ies"
    return noun + "s"


def past_tense(verb: str) -> str:
    """Regular English simple past (the verb lists avoid consonant doubling): -d after e, -ied after consonant + y."""
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in VOWELS:
        return verb[:-1] + "ied"
    return verb + "ed"


def _word_form(rng: random.Random) -> Example:
    if rng.random() < 0.5:
        w = rng.choice(PLURAL_NOUNS)
        form, p = "plural", plural(w)
        ins, inp = rng.choice([(f"What is the plural of '{w}'?", ""), (f"Give the plural form of the noun '{w}'.", ""),
                               ("Write the plural of this noun.", w)])
    else:
        w = rng.choice(PAST_VERBS)
        form, p = "past tense", past_tense(w)
        ins, inp = rng.choice([(f"What is the past tense of '{w}'?", ""),
                               (f"Write the simple past of the verb '{w}'.", ""),
                               ("Give the past tense of this verb.", w)])
    out = rng.choice([f"The {form} of '{w}' is '{p}'.", p])
    return ("form", form, w), ins, inp, out, p


def _compare_numbers(rng: random.Random) -> Example:
    digits = rng.randint(2, 4)
    a, b = rng.sample(range(10 ** (digits - 1), 10**digits), 2)
    lo, hi = min(a, b), max(a, b)
    if rng.random() < 0.5:
        ins, inp = rng.choice([(f"Which is larger, {a} or {b}?", ""),
                               ("Pick the larger of the two numbers.", f"{a}, {b}")])
        out = rng.choice([f"{hi} is larger than {lo}.", f"The larger number is {hi}."])
        return ("compare", lo, hi, "larger"), ins, inp, out, str(hi)
    ins, inp = rng.choice([(f"Which number is smaller: {a} or {b}?", ""),
                           ("Pick the smaller of the two numbers.", f"{a}, {b}")])
    out = rng.choice([f"{lo} is smaller than {hi}.", f"The smaller number is {lo}."])
    return ("compare", lo, hi, "smaller"), ins, inp, out, str(lo)


def _day_of_week(rng: random.Random) -> Example:
    d, n, later = rng.randrange(7), rng.randint(2, 30), rng.random() < 0.6
    day, res = DAYS[d], DAYS[(d + n if later else d - n) % 7]
    if later:
        ins, inp = rng.choice([(f"If today is {day}, what day of the week will it be in {n} days?", ""),
                               (f"What day comes {n} days after {day}?", "")])
        out = rng.choice([f"{n} days after {day} is {res}.", f"It will be {res}."])
    else:
        ins, inp = rng.choice([(f"If today is {day}, what day was it {n} days ago?", ""),
                               (f"What day of the week is {n} days before {day}?", "")])
        out = rng.choice([f"{n} days before {day} is {res}.", f"It was {res}."])
    return ("dow", d, n, later), ins, inp, out, res


_GENERATORS: dict[str, Callable[[random.Random], Example]] = {
    "arithmetic": _arithmetic, "unit_conversion": _unit_conversion, "reverse_word": _reverse_word,
    "count_letters": _count_letters, "sort_numbers": _sort_numbers, "capital": _capital, "word_form": _word_form,
    "compare_numbers": _compare_numbers, "day_of_week": _day_of_week,
}
assert tuple(_GENERATORS) == FAMILIES


class _Drawer:
    """Draws fresh clean examples: no repeated task content (key), and never a repeated prompt."""

    def __init__(self, rng: random.Random):
        self.rng, self.keys, self.prompts = rng, set(), set()

    def draw(self, family: str) -> dict:
        start = FAMILIES.index(family)
        for fam in FAMILIES[start:] + FAMILIES[:start]:  # a family whose content ran out hands over to the next
            for attempt in range(200):
                key, ins, inp, out, _ = _GENERATORS[fam](self.rng)
                if (ins, inp) in self.prompts or (key in self.keys and attempt < 100):
                    continue
                self.keys.add(key)
                self.prompts.add((ins, inp))
                return {"instruction": ins, "input": inp, "output": out, "family": fam, "defect": ""}
        raise ValueError("ran out of distinct demo tasks; ask for fewer rows")


# --------------------------------------------------------------------------- defects


def _wrong_number(output: str, family: str, rng: random.Random) -> str:
    """Change the answer's number: one list element when sorting, else the last number (always the result)."""
    spans = list(re.finditer(r"\d+(?:\.\d+)?", output))
    m = spans[rng.randrange(len(spans))] if family == "sort_numbers" else spans[-1]
    value = int(m.group())  # answers are whole numbers (only the question's amount can be a half)
    taken = {int(s.group()) for s in spans} if family == "sort_numbers" else {value}
    grain = 10 ** min(len(m.group()) - len(m.group().rstrip("0")), len(m.group()) - 1)  # 31500 moves in 100s
    while True:  # a plausible slip: off by a few units of the number's own grain
        wrong = value + rng.choice([-1, 1]) * grain * rng.randint(1, 3 if family == "count_letters" else 9)
        if wrong >= 0 and wrong not in taken:
            return output[: m.start()] + str(wrong) + output[m.end():]


def _truncate(output: str, rng: random.Random) -> str:
    """Keep the first 30-50 % of the characters, cutting inside a word or number where possible."""
    cuts = range(max(1, math.ceil(0.3 * len(output))), max(2, math.floor(0.5 * len(output)) + 1))
    inside = [k for k in cuts if k < len(output) and output[k - 1].isalnum() and output[k].isalnum()]
    loose = [k for k in cuts if k < len(output) and not output[k - 1].isspace()]
    return output[: rng.choice(inside or loose or [max(1, len(output) // 2)])]


def _gibberish(output: str, rng: random.Random) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    while True:
        if len(output) < 20 or rng.random() < 0.5:  # random letters shaped like the answer's words
            text = " ".join("".join(rng.choice(letters) for _ in tok) for tok in output.split())
        else:  # the answer's own characters, shuffled
            chars = list(output)
            rng.shuffle(chars)
            text = "".join(chars).strip()
        if text and text != output:
            return text


def _near_duplicate(row: dict, rng: random.Random, taken: set[tuple[str, str, str]]) -> dict:
    """A trivial edit: first letter lower-cased, a doubled space, the final full stop toggled, or a synonym."""
    edits = ["case", "space", "punct", "synonym"]
    rng.shuffle(edits)
    for edit in edits + ["space_end"]:
        new = dict(row)
        ins, out = row["instruction"], row["output"]
        if edit == "case":
            new["instruction"] = ins[:1].lower() + ins[1:]
        elif edit == "space" and " " in ins:
            spaces = [i for i, ch in enumerate(ins) if ch == " "]
            i = rng.choice(spaces)
            new["instruction"] = ins[:i] + " " + ins[i:]
        elif edit == "punct":
            new["output"] = out[:-1] if out.endswith(".") else out + "."
        elif edit == "synonym":
            for old, syn in SYNONYMS:
                if old in ins:
                    new["instruction"] = ins.replace(old, syn, 1)
                    break
        elif edit == "space_end":
            new["instruction"] = ins.rstrip(".?") + " ."
        triple = (new["instruction"], new["input"], new["output"])
        if triple != (ins, row["input"], out) and triple not in taken:
            return new
    raise AssertionError("no near-duplicate edit applies")  # unreachable: "space_end" always changes the text


def generate_demo_with_sources(n_clean: int = 240, seed: int = 0) -> tuple[list[dict], dict[str, dict]]:
    """The demo records, and for each defect row id the clean record it was made from.

    For ``swapped_answer``, ``wrong_number``, ``truncated`` and ``gibberish`` the source is a clean task that is
    *not* in the dataset (so no prompt appears twice with different answers); its output is the right answer.
    For the duplicates the source is the clean row (with its id) that was copied.
    """
    return _generate(_Drawer(random.Random(seed)), n_clean)


def _generate(drawer: _Drawer, n_clean: int) -> tuple[list[dict], dict[str, dict]]:
    """The body of :func:`generate_demo_with_sources`, drawing every task from ``drawer`` (which keeps their keys)."""
    if n_clean < len(FAMILIES):
        raise ValueError(f"n_clean must be at least {len(FAMILIES)}")
    rng = drawer.rng
    families = [FAMILIES[i % len(FAMILIES)] for i in range(n_clean)]
    rng.shuffle(families)
    clean = [drawer.draw(fam) for fam in families]
    per_kind = max(1, round(n_clean * DEFECT_SHARE / (1 - DEFECT_SHARE) / len(DEFECT_KINDS)))

    made: list[tuple[dict, dict]] = []  # (defect row, its source)
    offset = rng.randrange(len(FAMILIES))
    for i in range(per_kind):
        src = drawer.draw(FAMILIES[(offset + i) % len(FAMILIES)])
        donor = rng.choice([row for row in clean if row["family"] != src["family"]])
        made.append((dict(src, output=donor["output"], defect="swapped_answer"), src))
    for i in range(per_kind):
        src = drawer.draw(NUMERIC_FAMILIES[i % len(NUMERIC_FAMILIES)])
        made.append((dict(src, output=_wrong_number(src["output"], src["family"], rng), defect="wrong_number"), src))
    for i in range(per_kind):
        src = drawer.draw(FAMILIES[(offset + i) % len(FAMILIES)])
        while len(src["output"]) < 15:  # too short to cut 30-50 % of the way in; draw another
            src = drawer.draw(src["family"])
        made.append((dict(src, output=_truncate(src["output"], rng), defect="truncated"), src))
    for i in range(per_kind):
        src = drawer.draw(FAMILIES[(offset + i) % len(FAMILIES)])
        made.append((dict(src, output=_gibberish(src["output"], rng), defect="gibberish"), src))

    order = list(range(n_clean))
    rng.shuffle(order)
    for j in order[:per_kind]:
        made.append((dict(clean[j], defect="exact_duplicate"), clean[j]))
    taken = {(r["instruction"], r["input"], r["output"]) for r in clean}
    for j in order[per_kind : 2 * per_kind]:
        near = _near_duplicate(clean[j], rng, taken)
        taken.add((near["instruction"], near["input"], near["output"]))
        made.append((dict(near, defect="near_duplicate"), clean[j]))

    rows = clean + [row for row, _ in made]
    sources = {id(row): src for row, src in made}
    rng.shuffle(rows)
    width = max(4, len(str(len(rows))))
    records, by_id = [], {}
    for i, row in enumerate(rows, start=1):
        rid = f"demo-{i:0{width}d}"
        records.append({"id": rid, **{k: row[k] for k in ("instruction", "input", "output", "family", "defect")}})
        row["id"] = rid  # clean rows are the sources of the duplicates: they take their id along
        if id(row) in sources:
            by_id[rid] = sources[id(row)]
    return records, {rid: dict(src) for rid, src in by_id.items()}


def generate_demo(n_clean: int = 240, seed: int = 0) -> list[dict]:
    """~``n_clean / 0.8`` Alpaca-layout records (id, instruction, input, output, family, defect); identical for a seed.

    ``defect`` is "" for the ``n_clean`` clean rows, else one of ``DEFECT_KINDS`` (the same number of each,
    together about 20 % of the rows). Rows are shuffled; ids run demo-0001, demo-0002, ... in file order.
    """
    return generate_demo_with_sources(n_clean, seed)[0]


def _write_jsonl(path: str | Path, records: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records), encoding="utf-8")
    return path


def write_demo(path: str | Path, **kwargs) -> Path:
    """Write ``generate_demo(**kwargs)`` to ``path`` as JSONL (UTF-8, one record a line) and return the path."""
    return _write_jsonl(path, generate_demo(**kwargs))


# --------------------------------------------------------------------------- held-out clean tasks with answers

HELDOUT_NAME = "demo-heldout"  # the dataset name the ``demo --heldout N`` command ingests them under


def _demo_tasks(n_clean: int, seed: int) -> tuple[set[tuple], set[tuple[str, str]]]:
    """Semantic keys and (instruction, input) prompts of ``generate_demo(n_clean, seed)``'s rows and defect sources."""
    drawer = _Drawer(random.Random(seed))
    records, _ = _generate(drawer, n_clean)
    return drawer.keys, drawer.prompts | {(r["instruction"], r["input"]) for r in records}


def generate_heldout(n: int = 90, seed: int = 1, exclude_seed: int = 0, exclude_n_clean: int = 240) -> list[dict]:
    """``n`` clean tasks the demo never contains, each with its computed short ``answer``: an evaluation set.

    Records (id, instruction, input, output, family, answer), ids heldout-0001, ...; families balanced to within
    one, in an order shuffled by ``random.Random(seed)``. No task shares its semantic key (what it asks about: the
    same sum, word, country, ...) or its (instruction, input) with a row of ``generate_demo(exclude_n_clean,
    exclude_seed)`` or a task its defects were made from, nor repeats within the set: a model fine-tuned on that
    demo is evaluated on tasks it never saw. ``answer`` is the bare result ("1500", "Paris", "tenalp", "3, 17, 42")
    that every phrasing of ``output`` contains, so a generation is judged by whether it states the answer.
    """
    keys, prompts = _demo_tasks(exclude_n_clean, exclude_seed)
    rng = random.Random(seed)
    families = [FAMILIES[i % len(FAMILIES)] for i in range(n)]
    rng.shuffle(families)
    width = max(4, len(str(n)))
    records = []
    for i, family in enumerate(families, start=1):
        for _ in range(2000):
            key, ins, inp, out, answer = _GENERATORS[family](rng)
            if key not in keys and (ins, inp) not in prompts:
                break
        else:
            raise ValueError(f"ran out of {family} tasks outside the demo; ask for fewer held-out rows")
        keys.add(key)
        prompts.add((ins, inp))
        records.append({"id": f"heldout-{i:0{width}d}", "instruction": ins, "input": inp, "output": out,
                        "family": family, "answer": answer})  # fmt: skip
    return records


def write_heldout(path: str | Path, **kwargs) -> Path:
    """Write ``generate_heldout(**kwargs)`` to ``path`` as JSONL (UTF-8, one record a line) and return the path."""
    return _write_jsonl(path, generate_heldout(**kwargs))


def answers_of(examples: pd.DataFrame) -> list[str | None]:
    """Each example's ``answer`` field, read from its ``original`` JSON (None where the record had none)."""
    answers: list[str | None] = []
    for original in examples["original"]:
        try:
            answer = json.loads(original).get("answer")
        except (TypeError, ValueError, AttributeError):  # not JSON text, or not an object
            answer = None
        answers.append(None if answer is None else str(answer))
    return answers


# --------------------------------------------------------------------------- planted swaps in preference pairs

SWAP_LABEL = "swapped_pair"


def write_planted_pairs(source: str, path: Path, limit: int | None = None, fraction: float = 0.2,
                        seed: int = 0) -> tuple[Path, int]:
    """Copy the first ``limit`` records of a pair SOURCE to JSONL ``path``, swapping chosen and rejected in a
    seeded ``fraction`` of the pairs whose two sides differ, labelled ``defect`` = "swapped_pair" ("" elsewhere).

    A swapped pair prefers the worse reply: a score that tracks pair quality (``irm``) should rank it low;
    ``status`` reports that as an AUROC. Returns (path, number of swapped pairs).
    """
    if not 0 < fraction < 1:
        raise UserError(f"--swap {fraction}: the share of swapped pairs must lie strictly between 0 and 1")
    raws = [r for r in read_records(resolve_source(source), limit) if r.record is not None]
    spec = detect_pair_layout(record_columns(raws), None, source) if raws else None
    if spec is None:
        raise UserError(f"{source}: no preference pairs found (need chosen and rejected columns)")
    if "defect" in record_columns(raws):
        raise UserError(f"{source}: already has a 'defect' column; plant swaps into a source without one")
    candidates = [i for i, r in enumerate(raws) if r.record.get(spec.chosen) != r.record.get(spec.rejected)]
    swapped = set(random.Random(seed).sample(candidates, round(fraction * len(candidates))))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i, raw in enumerate(raws):
            record = dict(raw.record)
            if i in swapped:
                record[spec.chosen], record[spec.rejected] = record[spec.rejected], record[spec.chosen]
            record["defect"] = SWAP_LABEL if i in swapped else ""
            fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    return path, len(swapped)
