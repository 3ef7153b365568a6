"""A tiny table that prints as text and renders as HTML in a notebook.

Every plot in the lab comes with the numbers behind it; ``Table`` is how they
are shown, without pulling in pandas.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field


def _fmt(value, digits: int) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if value != 0 and abs(value) < 0.5 * 10 ** -digits:  # would print as 0.00: show its size instead
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return str(value)


@dataclass
class Table:
    headers: list[str]
    rows: list[list] = field(default_factory=list)
    title: str = ""
    digits: int = 2
    note: str = ""  # e.g. where the numbers come from

    def __post_init__(self):
        for row in self.rows:
            if len(row) != len(self.headers):
                raise ValueError(f"row {row} has {len(row)} cells but there are "
                                 f"{len(self.headers)} headers")

    def column(self, header: str) -> list:
        i = self.headers.index(header)
        return [row[i] for row in self.rows]

    def as_dicts(self) -> list[dict]:
        return [dict(zip(self.headers, row)) for row in self.rows]

    def __str__(self) -> str:
        cells = [[_fmt(v, self.digits) for v in row] for row in self.rows]
        widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
                  for i, h in enumerate(self.headers)]
        line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))
        out = [self.title] if self.title else []
        out += [line(self.headers), line(["-" * w for w in widths])]
        out += [line(r) for r in cells]
        if self.note:
            out.append(self.note)
        return "\n".join(out)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        esc = lambda v: html.escape(_fmt(v, self.digits))
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>"
                       for row in self.rows)
        caption = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        note = f"<p><small>{html.escape(self.note)}</small></p>" if self.note else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"
