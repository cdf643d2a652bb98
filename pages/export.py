"""Export: a saved selection to JSONL / Parquet / CSV / a `datasets` folder, with the original columns (and the
scores if asked) and ``manifest.json`` beside it. Files go under the cache's exports folder only: the name typed
here is sanitised to one safe folder name. Small files get a download button; the equivalent CLI line is shown.

"Export name" is the export's folder. Its default follows the chosen selection (``<dataset>-<selection>``); a name
the user typed is remembered for the selection it was typed for, so switching selections never carries one
selection's folder over to another. An export folder belongs to one selection: the library refuses to write
another selection into it (scoring.export), and that refusal, like every other error, is shown with st.error.
"""
from __future__ import annotations

import json
import re
import shlex

import streamlit as st

from pages import _ui
from scoring.errors import UserError
from scoring.export import EXTENSIONS, FORMATS, export_selection
from scoring.scores.view_reads import frame
from scoring.scores.views import score_view
from scoring.selection.saved import list_selections, load_selection

DOWNLOAD_LIMIT = 50 * 1024 * 1024  # bytes: bigger exports are fetched from the exports folder

ctx = _ui.ctx()
st.title("Export")
if not ctx.dataset:
    _ui.need_view(ctx)
saved = list_selections(ctx.cache, ctx.dataset)
if not saved:
    where = "**Pairs** page (the LossDiff-IRM band) or the **Select**" if ctx.is_pair else "**Select**"
    st.info(f"No saved selection for {ctx.dataset} yet: save one on the {where} page (or with "
            "`python -m scoring select … --save NAME`).")  # fmt: skip
    st.stop()


def safe_name(text: str) -> str:
    """One folder name made of letters, digits, '.', '_' and '-' (never a path: no '/', no '..')."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text.strip()).strip(".-")
    return re.sub(r"\.{2,}", ".", cleaned)[:80]


def default_name(selection: str) -> str:
    return f"{ctx.dataset}-{selection}"


def name_for(selection: str) -> None:
    """Set the "Export name" box for ``selection`` before it is drawn: the name typed for it, else its default.

    A value that changed since the last run was typed by the user, for the selection now chosen; it is kept as
    that selection's name. Otherwise a change of selection puts that selection's own name in the box."""
    state = st.session_state
    typed = state.setdefault("export_names_typed", {})
    key = (ctx.dataset, selection)
    current = state.get("export_name")
    if current is not None and current != state.get("export_name_seen"):
        typed[key] = current
    if current is None or state.get("export_name_for") != key:
        state["export_name"] = typed.get(key, default_name(selection))
    state["export_name_for"] = key


names = [s["name"] for s in saved]
selection = st.selectbox("Saved selection", names, key="export_selection")
record = next(s for s in saved if s["name"] == selection)
st.caption(f"{record.get('n_kept', 0):,} rows kept of {record.get('n_total', 0):,} — scores {record.get('scores')}, "
           f"rule {record.get('rule')}, budget {record.get('budget')}")  # fmt: skip
if record.get("partial"):
    st.warning(f"Partial selection: saved while its scores were being computed ({record['partial'].get('scored', 0):,} "
               f"of {record['partial'].get('rows', 0):,} rows scored). Its export says so in manifest.json.")
c1, c2, c3 = st.columns(3)
fmt = c1.radio("Format", FORMATS, horizontal=True, key="export_format",
               format_func=lambda f: "datasets folder" if f == "hf" else f)  # fmt: skip
with_scores = c2.checkbox("Add score columns", key="export_scores")
name_for(selection)
typed_name = c3.text_input("Export name", key="export_name", help="the export's folder under the cache's exports "
                           "folder; one folder per selection")  # fmt: skip
st.session_state["export_name_seen"] = typed_name
folder = safe_name(typed_name) or safe_name(default_name(selection)) or "export"
out = ctx.cache.exports_dir() / folder / (f"{ctx.dataset}-{selection}{EXTENSIONS[fmt]}" if fmt != "hf" else "data")
command = (f"python -m scoring --cache {shlex.quote(str(ctx.cache.root))} export {shlex.quote(ctx.dataset)} "
           f"{shlex.quote(selection)} --format {fmt} --out {shlex.quote(str(out))}"
           + (" --with-scores" if with_scores else ""))  # fmt: skip
st.markdown("Equivalent command:")
st.code(command, language="bash")

if st.button("Export", key="export_go", type="primary"):
    try:
        scores = None
        if with_scores:
            spec, _ = load_selection(ctx.cache, ctx.dataset, selection)
            view = score_view(ctx.cache, ctx.dataset, (spec.get("runs") or [None])[0])
            scores = frame(view, ["id", *view.score_columns])
        result = export_selection(ctx.cache, ctx.dataset, selection, fmt, out, scores, command=command)
        st.session_state["export_last"] = (str(result.path), str(result.manifest_path), result.n_rows, fmt)
    except UserError as error:
        st.error(str(error))

last = st.session_state.get("export_last")
if last:
    path, manifest_path, n_rows, last_fmt = last
    st.success(f"Wrote {n_rows:,} rows to {path}")
    from pathlib import Path

    file = Path(path)
    if last_fmt != "hf" and file.is_file() and file.stat().st_size <= DOWNLOAD_LIMIT:
        st.download_button(f"Download {file.name}", file.read_bytes(), file_name=file.name, key="export_download")
    elif file.exists():
        st.caption("Too big (or a folder) to download here; it is in the exports folder above.")
    manifest = Path(manifest_path)
    if manifest.is_file():
        st.markdown("**manifest.json**")
        st.json(json.loads(manifest.read_text()), expanded=False)
        st.download_button("Download manifest.json", manifest.read_bytes(), file_name="manifest.json",
                           key="export_manifest")  # fmt: skip
