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
