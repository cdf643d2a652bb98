"""DavIR Studio's workbench: ``streamlit run app.py -- --cache DIR``.

The entry script only frames the pages: it finds the cache (``--cache``, else ``$DAVIR_CACHE``, else ``./cache``,
exactly like the CLI), lets the user pick a dataset and a score run in the sidebar, shows job progress there, and
runs the page chosen in the navigation. Every number a page shows comes from ``scoring`` (mostly
``scoring.queries`` over a materialised score view); no page re-implements a step of the flow.

Deep links: ``?dataset=NAME`` selects the dataset on any page, ``?example=ID`` opens an example on Inspect (a pair
on Pairs, for preference-pair datasets). A page also works when Streamlit runs it without this script (a deep link
on a fresh server): ``pages._ui.ctx`` builds the context then. The app requests nothing beyond its own server: the
favicon is ``static/favicon.png``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `pages` and `scoring` import from any working folder
from pages import _ui  # noqa: E402

# A local icon file, served by this server: a ":material/…" page_icon makes the browser fetch the favicon from
# fonts.gstatic.com (the icons of st.Page / st.page_link come from Streamlit's bundled Material Symbols font).
ICON = Path(__file__).resolve().parent / "static" / "favicon.png"
st.set_page_config(page_title="DavIR Studio", page_icon=str(ICON), layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/bar_chart:", url_path="overview", default=True),
    st.Page("pages/inspect.py", title="Inspect", icon=":material/search:", url_path="inspect"),
    st.Page("pages/map.py", title="Map", icon=":material/scatter_plot:", url_path="map"),
    st.Page("pages/pairs.py", title="Pairs", icon=":material/compare_arrows:", url_path="pairs"),
    st.Page("pages/select.py", title="Select", icon=":material/filter_alt:", url_path="select"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/science:", url_path="evaluate"),
    st.Page("pages/export.py", title="Export", icon=":material/download:", url_path="export"),
    st.Page("pages/jobs.py", title="Jobs", icon=":material/work:", url_path="jobs"),
]

page = st.navigation(PAGES)
_ui.sidebar()
page.run()
