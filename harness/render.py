"""A table as data, and its three renderings: Markdown, LaTeX (booktabs) and CSV.

A cell of a table is a Stat (the mean over the completed seeds of a row, ± the half-width of
its 95% interval), a plain value, a Mark (a row with nothing to show: missing, failed,
running) or None (not measured). A value is bold only when it is better than every other
row's beyond noise: by more than Z = 3 standard errors of the difference (a two-sided z-test
at p < 0.003), so each metric's noise is at most a third of any difference a table highlights.
The direction is in the header."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field


Z_BOLD = 3.0  # standard errors of a difference for a value to be bold
Z_INTERVAL = 1.96  # the printed ± is a 95% interval of the mean


@dataclass(frozen=True)
class Stat:
    mean: float
    sd: float | None  # spread over the row's cells (None: one cell)
    n: int
    se: float | None = None  # standard error of the mean: seeds and evaluation noise (None: unknown)

    @property
    def half_width(self) -> float | None:
        return None if self.se is None else Z_INTERVAL * self.se


@dataclass(frozen=True)
class Mark:
    text: str  # e.g. "missing", "failed", "2/3 seeds"


@dataclass(frozen=True)
class Column:
    name: str
    key: str
    better: str | None = None  # "min" | "max" | None (no best, no arrow)

    @property
    def header(self) -> str:
        return self.name + {"min": " ↓", "max": " ↑", None: ""}[self.better]


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[dict]
    notes: list[str] = field(default_factory=list)
    # rows whose values take no part in "best" (references such as the teacher, published numbers)
    reference_rows: set[int] = field(default_factory=set)

    def best(self) -> dict[str, int]:
        """Per metric column, the row whose value beats every other ranked row's by more than
        Z_BOLD standard errors of the difference (none where no row does, or an se is unknown)."""
        out = {}
        for col in self.columns:
            if col.better is None:
                continue
            ranked = [(i, r.get(col.key)) for i, r in enumerate(self.rows) if i not in self.reference_rows]
            ranked = [(i, v) for i, v in ranked if _number(v) is not None and math.isfinite(_number(v))]
            if len(ranked) < 2:
                continue
            sign = 1.0 if col.better == "min" else -1.0
            i_best, best = min(ranked, key=lambda iv: sign * _number(iv[1]))
            if all(_beats(best, other, sign) for i, other in ranked if i != i_best):
                out[col.key] = i_best
        return out


def _se(value):
    return value.se if isinstance(value, Stat) else None


def _beats(a, b, sign: float) -> bool:
    """a better than b beyond noise: sign × (b − a) > Z_BOLD × √(se_a² + se_b²)."""
    se_a, se_b = _se(a), _se(b)
    if se_a is None or se_b is None:
        return False
    return sign * (_number(b) - _number(a)) > Z_BOLD * math.hypot(se_a, se_b)


def _number(value):
    if isinstance(value, Stat):
        return value.mean
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, Mark):
        return value.text
    if isinstance(value, Stat):
        return fmt(value.mean) if value.half_width is None else f"{fmt(value.mean)} ± {fmt(value.half_width)}"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if abs(value) < 1e-12:  # a standard error of exactly nothing, up to float dust (2e-15)
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 0.01:
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
        return f"{value:.2g}"
    return str(value)


def _cells(table: Table, escape=lambda s: s, bold=lambda s: f"**{s}**", italic=lambda s: f"*{s}*"):
    best = table.best()
    for i, row in enumerate(table.rows):
        out = []
        for col in table.columns:
            value = row.get(col.key)
            text = escape(fmt(value))
            if isinstance(value, Mark):
                text = italic(text)
            elif best.get(col.key) == i:
                text = bold(text)
            out.append(text)
        yield i, out


def markdown(table: Table) -> str:
    lines = [f"**{table.title}**", "", "| " + " | ".join(c.header for c in table.columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.columns))) + "|"]
    for i, cells in _cells(table):
        if i in table.reference_rows and table.rows[i].get("_italic"):
            cells = [f"*{c}*" if c and c != "–" else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [n for n in table.notes if n]
    return "\n".join(lines + [""] + [f"{n}  " for n in notes] + ([""] if notes else []))


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
          "~": r"\textasciitilde{}", "^": r"\^{}"}


def _tex(text: str) -> str:
    text = "".join(_LATEX.get(ch, ch) for ch in text)
    return text.replace("±", r"$\pm$").replace("↓", r"$\downarrow$").replace("↑", r"$\uparrow$").replace("–", "--").replace("×", r"$\times$")


def latex(table: Table) -> str:
    spec = "l" + "r" * (len(table.columns) - 1)
    lines = [f"% {table.title}", r"\begin{tabular}{" + spec + "}", r"\toprule",
             " & ".join(_tex(c.header) for c in table.columns) + r" \\", r"\midrule"]
    for i, cells in _cells(table, escape=_tex, bold=lambda s: r"\textbf{" + s + "}", italic=lambda s: r"\textit{" + s + "}"):
        if i in table.reference_rows and table.rows[i].get("_italic"):
            cells = [r"\textit{" + c + "}" if c and c != "--" else c for c in cells]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def csv_rows(table: Table) -> list[dict]:
    """One CSV row per table row: each metric as <key> (mean), <key>_se (standard error of the
    mean), <key>_ci95 (half-width), <key>_sd (spread over cells) and <key>_n."""
    out = []
    for row in table.rows:
        flat = {"table": table.title}
        for col in table.columns:
            value = row.get(col.key)
            if isinstance(value, Stat):
                flat[col.key], flat[f"{col.key}_se"], flat[f"{col.key}_ci95"] = value.mean, value.se, value.half_width
                flat[f"{col.key}_sd"], flat[f"{col.key}_n"] = value.sd, value.n
            elif isinstance(value, Mark):
                flat[col.key] = value.text
            else:
                flat[col.key] = value
        out.append(flat)
    return out


def to_csv(tables: list[Table]) -> str:
    rows = [r for t in tables for r in csv_rows(t)]
    fields = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
