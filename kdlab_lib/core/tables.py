"""Tables and short texts that print as text and render as HTML in a notebook.

Every plot in the lab comes with the numbers behind it; ``Table`` is how they are shown, without
pulling in pandas: integers with thousands separators, one number of digits per column (or one for
all), shares as percentages where asked, text left-aligned, the title on one line above.
``describe`` shows a budget dataclass as such a table, each setting beside the comment its source
gives it. ``Bullets`` is a verdict: plain text that reads as a short list, its key number in bold.
"""
from __future__ import annotations

import dataclasses
import html
import inspect
import re
from dataclasses import dataclass, field


def _fmt(value, digits: int, percent: bool = False) -> str:
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:   # a 0-dim tensor or numpy scalar
        value = value.item()
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v, digits, percent) for v in value)
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{100 * value:,}%" if percent else f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if percent:
            return f"{100 * value:.{max(digits - 2, 1)}f}%"
        if value != 0 and abs(value) < 0.5 * 10 ** -digits:  # would print as 0.00: show its size instead
            return f"{value:.1e}"
        return f"{value:,.{digits}f}"
    return str(value)


@dataclass
class Table:
    headers: list[str]
    rows: list[list] = field(default_factory=list)
    title: str = ""
    digits: int | list[int] = 2     # one for every column, or one per column
    note: str = ""                  # e.g. where the numbers come from
    percent: tuple = ()             # headers whose values are shares, shown as percentages

    def __post_init__(self):
        for row in self.rows:
            if len(row) != len(self.headers):
                raise ValueError(f"row {row} has {len(row)} cells but there are "
                                 f"{len(self.headers)} headers")
        if isinstance(self.digits, (list, tuple)) and len(self.digits) != len(self.headers):
            raise ValueError(f"digits lists {len(self.digits)} columns but there are {len(self.headers)} headers")

    def column(self, header: str) -> list:
        i = self.headers.index(header)
        return [row[i] for row in self.rows]

    def as_dicts(self) -> list[dict]:
        return [dict(zip(self.headers, row)) for row in self.rows]

    def cell(self, row: list, i: int) -> str:
        digits = self.digits[i] if isinstance(self.digits, (list, tuple)) else self.digits
        return _fmt(row[i], digits, self.headers[i] in self.percent)

    def __str__(self) -> str:
        cells = [[self.cell(row, i) for i in range(len(row))] for row in self.rows]
        widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
                  for i, h in enumerate(self.headers)]
        text_col = [bool(self.rows) and all(isinstance(r[i], str) for r in self.rows) for i in range(len(widths))]

        def line(vals):
            return "  ".join(v.ljust(w) if left else v.rjust(w) for v, w, left in zip(vals, widths, text_col))
        out = [self.title] if self.title else []
        out += [line(self.headers), line(["-" * w for w in widths])]
        out += [line(r) for r in cells]
        if self.note:
            out.append(self.note)
        return "\n".join(out)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        def td(row, i):
            align = "left" if isinstance(row[i], str) else "right"
            return f'<td style="text-align:{align}">{html.escape(self.cell(row, i))}</td>'
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(td(row, i) for i in range(len(row))) + "</tr>" for row in self.rows)
        title = (f'<p style="margin:0.4em 0 0.2em 0"><b>{html.escape(self.title)}</b></p>' if self.title else "")
        note = f"<p><small>{html.escape(self.note)}</small></p>" if self.note else ""
        return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def _field_comments(cls) -> dict[str, str]:
    """``{field: the comment on its line}`` from a dataclass's source (empty where there is none)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    line = re.compile(r"^\s+(\w+)\s*:[^#\n]*#\s*(.*)$", re.M)    # name: type = default  # comment
    return {m[1]: m[2].strip() for m in line.finditer(source)}


def describe(budget, title: str | None = None) -> Table:
    """A budget (or any dataclass) as a two-column table, each setting beside its comment in the source
    (which gives the published value where ours differs)."""
    if not dataclasses.is_dataclass(budget):
        raise ValueError(f"describe needs a dataclass (a budget), got {type(budget).__name__}")
    comments = _field_comments(type(budget))
    def shown(v):
        return f"{v:g}" if isinstance(v, float) else v
    rows = [[f.name, shown(getattr(budget, f.name)), comments.get(f.name, "")] for f in dataclasses.fields(budget)]
    return Table(["setting", "value", "why / the published value"], rows, digits=4,
                 title=title or f"{type(budget).__name__}")


_NUMBER = re.compile(r"[-+±]?\d[\d,]*(?:\.\d+)?(?:\s?[%×x])?")


class Bullets(str):
    """Plain text (one claim per line) that a notebook shows as a short list, each line's first number
    in bold: a verdict reads at a glance and never wraps mid-word in a fixed-width box."""

    def _repr_html_(self) -> str:
        items = []
        for line in self.splitlines():
            esc = html.escape(line)
            items.append("<li>" + _NUMBER.sub(lambda m: f"<b>{m.group(0)}</b>", esc, count=1) + "</li>")
        return "<ul style='margin:0.2em 0'>" + "".join(items) + "</ul>"
