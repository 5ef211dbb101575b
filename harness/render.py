"""A table as data, and its three renderings: Markdown, LaTeX (booktabs) and CSV.

A cell of a table is a Stat (the mean over the completed seeds of a row, ± the half-width of
its 95% interval), a plain value, a Mark (a row with nothing to show: missing, failed,
running) or None (not measured). A value is bold only when it is better than every other
row's beyond noise: by more than 3 standard errors of the difference, so each metric's noise
is at most a third of any difference a table highlights, and by more than Student's t at
p < 0.05 two-sided where a few seeds' spread makes the se itself uncertain (Welch's degrees of
freedom: 3 seeds against 3 seeds need 2.8-4.3 se). The direction is in the header.

An se comes with its degrees of freedom: None where it is the evaluation noise of hundreds of
images (normal quantiles), k − 1 where the spread of a row's k seeds decides it."""

from __future__ import annotations

import csv
import functools
import io
import math
from dataclasses import dataclass, field


Z_BOLD = 3.0  # standard errors of a difference for a value to be bold (at least)
LEVEL = 0.95  # the printed ± is a 95% interval of the mean; a bold difference passes a t-test at 1 − LEVEL too


@functools.lru_cache(maxsize=None)
def quantile(df: float | None) -> float:
    """The two-sided LEVEL quantile: Student's t with `df` degrees of freedom, the normal's
    (1.96) where df is None (an se from hundreds of images) or infinite."""
    from scipy import stats  # (only tables need it: kept off a cell's imports)

    upper = 1 - (1 - LEVEL) / 2
    return float(stats.norm.ppf(upper) if df is None or math.isinf(df) else stats.t.ppf(upper, df))


def welch_df(ses_dfs) -> float | None:
    """Welch–Satterthwaite degrees of freedom of a sum or difference of independent means, given
    each one's (se, df): (Σ se²)² / Σ (se⁴ / df); a term with df None counts as exactly known.
    None where every term is (the normal applies)."""
    finite = [(se, df) for se, df in ses_dfs if df is not None]
    if not finite:
        return None
    denominator = sum(se ** 4 / df for se, df in finite)
    total = sum(se * se for se, _ in ses_dfs)
    return None if denominator == 0 else total * total / denominator


@dataclass(frozen=True)
class Stat:
    mean: float
    sd: float | None  # spread over the row's cells (None: one cell)
    n: int
    se: float | None = None  # standard error of the mean: seeds and evaluation noise (None: unknown)
    df: float | None = None  # the se's degrees of freedom (None: known from many images; k − 1: from k seeds)

    @property
    def half_width(self) -> float | None:
        return None if self.se is None else quantile(self.df) * self.se


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


def difference(a: Stat, b: Stat) -> tuple[float, float | None, float | None]:
    """b − a, its standard error and that se's Welch degrees of freedom (se None: unknown)."""
    if a.se is None or b.se is None:
        return b.mean - a.mean, None, None
    return b.mean - a.mean, math.hypot(a.se, b.se), welch_df([(a.se, a.df), (b.se, b.df)])


def beyond_noise(diff: float, se: float, df: float | None) -> bool:
    """The tables' bold rule for a difference: more than Z_BOLD of its se, and outside its
    LEVEL interval (Welch's t with `df`, or the normal)."""
    return abs(diff) > max(Z_BOLD, quantile(df)) * se


def _beats(a, b, sign: float) -> bool:
    """a better than b beyond noise: sign × (b − a) > 0 and beyond_noise."""
    if not isinstance(a, Stat) or not isinstance(b, Stat):
        return False
    d, se, df = difference(a, b)
    if se is None:
        return False
    return sign * d > 0 and beyond_noise(d, se, df)


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
