"""What every checker returns, and the decorator that names, logs and guards it.

A checker never raises on a wrong answer: it returns a ``Verdict`` that is truthy when the answer is
right and shows as "✅ ..." or "Not yet: <hint>" in the notebook. ``@checker("id")`` stamps the
exercise id on it, appends one JSON line to ``$KDLAB_GRADE_LOG`` when that is set (``kdlab grade``),
and turns an error inside the checker into a "Not yet" verdict.
"""
from __future__ import annotations

import functools
import html
import json
import os
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Verdict:
    """A checker's answer: ``ok``, the message shown, the exercise's id, and the name of the classic slip
    the checker recognised in a wrong answer (None when it is right or the slip is not a known one)."""
    ok: bool
    message: str
    exercise: str | None = None
    slip: str | None = None

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return ("✅ " if self.ok else "Not yet: ") + self.message

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = "#009E73" if self.ok else "#D55E00"
        return f'<div class="kd-verdict" style="color:{colour}">{html.escape(str(self))}</div>'


def _verdict(ok: bool, message: str, slip: str | None = None) -> Verdict:
    """A verdict before ``@checker`` stamps the exercise id on it; ``slip`` names the classic slip recognised."""
    return Verdict(ok, message, slip=slip)


GRADE_LOG = "KDLAB_GRADE_LOG"   # kdlab grade: each checker call appends {"exercise", "ok", "slip"} here


def _log(v: Verdict) -> None:
    path = os.environ.get(GRADE_LOG)
    if path:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"exercise": v.exercise, "ok": v.ok, "slip": v.slip}) + "\n")
        except OSError:
            pass   # grading is formative: a log that cannot be written never breaks the reader's notebook


def checker(exercise):
    """Decorate a checker: its ``Verdict`` carries the exercise id (``exercise``, or a function of the
    checker's arguments giving it), is logged for ``kdlab grade`` when ``KDLAB_GRADE_LOG`` is set, and an
    error inside the checker becomes a "Not yet" verdict instead of a traceback."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kw):
            try:
                v = fn(*args, **kw)
            except Exception as err:  # the reader's answer broke the checker: say so, never raise
                v = Verdict(False, f"the checker could not use your answer ({type(err).__name__}: {err})")
            try:
                name = exercise(*args, **kw) if callable(exercise) else exercise
            except Exception:
                name = fn.__name__.removeprefix("check_")
            v = replace(v, exercise=name)
            _log(v)
            return v
        return run
    return wrap


def _call(fn, *args):
    """Run the reader's ``fn(*args)``: ``(result, None)``, or ``(None, what it raised)``."""
    try:
        return fn(*args), None
    except Exception as err:  # the reader's code: report, never raise
        return None, f"your function raised {type(err).__name__}: {err}"
