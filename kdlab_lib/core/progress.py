"""A progress line for the training loops.

In a notebook kernel the line is a small HTML display updated in place (an IPython display handle,
at most five times a second) and, when the loop ends, replaced by a one-line summary ("scratch: 4
epochs in 3.2 s"): a saved notebook shows what ran, never a half-drawn bar that reads as if the run
hung. Elsewhere (a script, a test, a bench) it is tqdm's bar, removed when done.
"""
from __future__ import annotations

import html
import time

from tqdm.std import tqdm


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class _Line:
    """A loop's progress as one HTML line in a notebook."""

    def __init__(self, iterable, total: int | None, desc: str, unit: str):
        from IPython.display import HTML, display
        self._html_cls = HTML
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix, self.closed = 0, "", False
        self.start = self.shown = time.perf_counter()
        self.handle = display(HTML(self._html()), display_id=True)

    def _html(self, done: bool = False) -> str:
        seconds = time.perf_counter() - self.start
        extra = f" · {html.escape(self.postfix)}" if self.postfix else ""
        if done:
            return f"<small>{html.escape(self.desc)}: {self.n:,} {self.unit} in {seconds:.1f} s{extra}</small>"
        of = f"/{self.total:,}" if self.total else ""
        bar = f'<progress value="{self.n}" max="{self.total}"></progress> ' if self.total else ""
        return f"<small>{html.escape(self.desc)}: {bar}{self.n:,}{of} {self.unit}, {seconds:.0f} s{extra}</small>"

    def update(self, k: int = 1):
        self.n += k
        if time.perf_counter() - self.shown > 0.2:
            self.handle.update(self._html_cls(self._html()))
            self.shown = time.perf_counter()

    def set_postfix(self, values: dict):
        self.postfix = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())

    def close(self):
        if not self.closed:
            self.closed = True
            self.handle.update(self._html_cls(self._html(done=True)))

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()


def progress(iterable=None, *, total: int | None = None, desc: str = "", enabled: bool = True,
             unit: str = "steps"):
    """Wrap a loop (or call ``update`` / ``close`` by hand) with a progress line: a notebook line that
    ends as a summary, tqdm's bar elsewhere, nothing when ``enabled`` is False."""
    if enabled and _in_kernel():
        return _Line(iterable if iterable is not None else range(total or 0), total, desc, unit)
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False, unit=f" {unit}")
