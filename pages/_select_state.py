"""The Select page's controls as one plain dict, and its three sources: the URL, a saved selection, a brush.

Why a dict of our own beside Streamlit's widget state: Streamlit forgets a widget's value in any run that does not
draw it (switch "Budget as" from percent to count and back and the slider would come back at its default while the
rule still said 22.5 %). The page keeps the truth here (``st.session_state["sel"]``), seeds each widget from it
before drawing it, and writes the widget's value back after; a saved selection, the URL or a brush on a chart
replace this dict and clear the widgets, which then reseed from it.

The URL holds the rule so a reload or a shared link restores it: ``?scores=davir,ifd&rules=top,band:25-75&
budget=6%&combine=and&flagged=1&quota=cluster&dedup=0.95``. Everything here is pure (no streamlit), so it is tested
directly.
"""
from __future__ import annotations

from scoring.errors import UserError
from scoring.queries.select import value_text
from scoring.selection.goodness import KINDS
from scoring.selection.rules import parse_budget, parse_rule

RULE_KINDS = KINDS  # the engine's rule kinds, in the order the radio offers them
RULE_LABELS = {"top": "top", "bottom": "bottom", "band": "percentile band", "above": "≥ value", "below": "≤ value",
               "vband": "value band"}  # fmt: skip
BUDGET_KINDS = ("percent", "count", "tokens", "all")
DEFAULT_PCT = 6.0
PARAM_KEYS = ("scores", "rules", "budget", "combine", "flagged", "quota", "dedup")


def default_state(scores: list[str], n_rows: int) -> dict:
    """The controls on a first visit: davir (else the first pair margin, else the first score), top 6 %."""
    first = next(([s] for s in ("davir", "margin_base") if s in scores), scores[:1])
    return {"scores": first, "rules": {s: {"kind": "top"} for s in first}, "budget_kind": "percent",
            "pct": DEFAULT_PCT, "count": min(max(n_rows // 10, 1), 1000), "tokens": 100_000, "combine": "and",
            "flagged": False, "quota": None, "dedup": None}  # fmt: skip


def rule_state(text: str) -> dict:
    """A rule text ("top", "band:25-75", "above:0.731", "band-values:0.1-0.4") as the controls hold it."""
    rule = parse_rule(text)
    if rule.kind in ("band", "vband"):
        return {"kind": rule.kind, "lo": float(rule.lo), "hi": float(rule.hi)}
    if rule.kind == "above":
        return {"kind": "above", "value": float(rule.lo)}
    if rule.kind == "below":
        return {"kind": "below", "value": float(rule.hi)}
    return {"kind": rule.kind}


def rule_text(state: dict) -> str:
    """The controls' rule for one score as the engine's text."""
    kind = state.get("kind", "top")
    if kind == "band":
        lo, hi = int(state.get("lo", 25)), int(state.get("hi", 75))
        return f"band:{lo}-{hi}" if lo < hi else f"band:{lo}-{min(lo + 1, 100)}"
    if kind == "vband":
        return f"band-values:{value_text(state['lo'])}-{value_text(state['hi'])}"
    if kind in ("above", "below"):
        return f"{kind}:{value_text(state['value'])}"
    return kind


def budget_text(state: dict) -> str:
    kind = state.get("budget_kind", "percent")
    if kind == "percent":
        return f"{float(state['pct']):g}%"
    if kind == "count":
        return str(int(state["count"]))
    if kind == "tokens":
        return f"{int(state['tokens'])}-tokens"
    return "all"


def budget_state(text: str, state: dict) -> dict:
    """``state`` with its budget set from a budget text ("6%", "300", "2M-tokens", "all")."""
    budget = parse_budget(text)
    out = dict(state)
    if str(text).strip().lower() == "all":
        out["budget_kind"] = "all"
    elif budget.kind == "fraction":
        out.update(budget_kind="percent", pct=round(budget.value * 100, 6))
    elif budget.kind == "count":
        out.update(budget_kind="count", count=int(budget.value))
    else:
        out.update(budget_kind="tokens", tokens=int(budget.value))
    return out


def from_params(params: dict, scores: list[str], n_rows: int) -> tuple[dict, str | None]:
    """(controls, problem) from URL parameters; unknown scores or unparsable parts are reported, not guessed."""
    state = default_state(scores, n_rows)
    if not any(k in params for k in PARAM_KEYS):
        return state, None
    try:
        wanted = [s for s in str(params.get("scores", "")).split(",") if s] or state["scores"]
        unknown = [s for s in wanted if s not in scores]
        if unknown:
            return state, f"the link names scores this run does not have: {', '.join(unknown)}"
        rules = [r for r in str(params.get("rules", "top")).split(",") if r] or ["top"]
        rules = rules * len(wanted) if len(rules) == 1 else rules
        if len(rules) != len(wanted):
            return state, f"the link gives {len(rules)} rules for {len(wanted)} scores"
        state.update(scores=wanted, rules={s: rule_state(r) for s, r in zip(wanted, rules)},
                     combine=str(params.get("combine", "and")), flagged=params.get("flagged") == "1",
                     quota=params.get("quota") or None,
                     dedup=float(params["dedup"]) if params.get("dedup") else None)  # fmt: skip
        if params.get("budget"):
            state = budget_state(str(params["budget"]), state)
    except (UserError, ValueError) as error:
        return default_state(scores, n_rows), f"the link's rule is not valid: {error}"
    return state, None


def to_params(state: dict) -> dict[str, str]:
    """The URL parameters of the controls (only what differs from the defaults is worth a long link, but all of the
    rule is written so a link means the same thing when the defaults change)."""
    params = {"scores": ",".join(state["scores"]), "rules": ",".join(rule_text(state["rules"][s])
                                                                     for s in state["scores"]),
              "budget": budget_text(state), "combine": state.get("combine", "and")}  # fmt: skip
    if state.get("flagged"):
        params["flagged"] = "1"
    if state.get("quota"):
        params["quota"] = str(state["quota"])
    if state.get("dedup") is not None:
        params["dedup"] = f"{float(state['dedup']):g}"
    return params


def from_record(record: dict, scores: list[str], n_rows: int) -> tuple[dict, str | None]:
    """The controls that rebuild a saved selection's rule (None for a hand-picked set, which has no rule)."""
    if record.get("manual") or not record.get("scores"):
        return default_state(scores, n_rows), (f"{record.get('name')} is a hand-picked set of rows, not a rule: it "
                                               "can colour the map but not fill the controls")  # fmt: skip
    params = {"scores": ",".join(record["scores"]), "rules": ",".join(record.get("rules") or [record.get("rule")]),
              "budget": str(record.get("budget", "all")), "combine": record.get("combine") or "and",
              "flagged": "1" if record.get("include_flagged") else "0", "quota": record.get("quota") or "",
              "dedup": "" if record.get("dedup") is None else str(record["dedup"])}  # fmt: skip
    return from_params(params, scores, n_rows)
