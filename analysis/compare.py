"""Is one row better than another beyond noise? The difference between two rows of a table of
`python -m analysis.tables`, per column, with its 95% interval and the tables' bold rule applied.

    python -m analysis.compare --sweep paper_table_seeds --out-dir outputs/reference \\
        --table "Style removal, ratio 0.05, stripes erased" --column "presence erased" --column FID \\
        "two-stage + esd" "two-stage + concept_ablation"

A row is named by its method label, with " K=<K>" where the table has several K of it
("bilevel (alternating, esd) K=10"); a table by its title or a unique part of it; a column by
its header without the arrow, or its key. The interval is the one the tables print for a
difference: Welch's t where a row's se is the spread of a few seeds (Welch–Satterthwaite df), the
normal where both rows' evaluation noise decides; "beyond noise" is the rule that makes a value
bold: more than 3 se of the difference and outside that 95% interval.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from harness.render import Stat, Table, beyond_noise, difference, quantile


class CompareError(ValueError):
    pass


@dataclass(frozen=True)
class Comparison:
    column: str  # its header
    a: Stat
    b: Stat
    diff: float  # b − a
    se: float
    df: float | None  # Welch df of se (None: the normal)

    @property
    def half_width(self) -> float:
        return quantile(self.df) * self.se

    @property
    def beyond_noise(self) -> bool:
        return beyond_noise(self.diff, self.se, self.df)

    def line(self, first: str, second: str) -> str:
        test = "normal" if self.df is None else f"Welch t, {self.df:.1f} df"
        verdict = "beyond noise" if self.beyond_noise else "within noise"
        return (f"{self.column}: {second} − {first} = {self.diff:+.3g} ± {self.half_width:.3g} (95%, {test}; "
                f"{first} {self.a.mean:.3g}, {second} {self.b.mean:.3g}): {verdict}")


def row_name(row: dict) -> str:
    return str(row.get("method", "")) + (f" K={row['K']}" if row.get("K") is not None else "")


def find_table(tables: list[Table], name: str) -> Table:
    exact = [t for t in tables if t.title == name]
    found = exact or [t for t in tables if name.lower() in t.title.lower()]
    if len(found) != 1:
        what = "no table" if not found else f"{len(found)} tables"
        raise CompareError(f"{what} named like {name!r}; the tables: " + "; ".join(t.title for t in tables))
    return found[0]


def find_row(table: Table, name: str) -> dict:
    names = {row_name(r): r for r in table.rows}
    if name in names:
        return names[name]
    plain = [r for r in table.rows if r.get("method") == name]  # the label alone, where it has one K in this table
    if len(plain) == 1:
        return plain[0]
    raise CompareError(f"no row {name!r} in {table.title!r}; its rows: " + "; ".join(names))


def compare(table: Table, first: str, second: str, column: str) -> Comparison:
    """second − first in `column` of `table`, with the se and df of that difference."""
    cols = [c for c in table.columns if column in (c.name, c.header, c.key)]
    if not cols:
        raise CompareError(f"no column {column!r} in {table.title!r}; its columns: " + ", ".join(c.name for c in table.columns))
    col = cols[0]
    a, b = find_row(table, first).get(col.key), find_row(table, second).get(col.key)
    for name, value in ((first, a), (second, b)):
        if not isinstance(value, Stat) or value.se is None:
            raise CompareError(f"{name!r} has no value with a standard error in {col.header!r} of {table.title!r} (it has {value!r})")
    diff, se, df = difference(a, b)
    return Comparison(col.header, a, b, diff, se, df)


def main(argv=None) -> int:
    from analysis.tables import attack_budget, load_study, paper_tables, probe_artifact

    parser = argparse.ArgumentParser(prog="python -m analysis.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", help="a sweep name (its latest sweep) or sweep id")
    parser.add_argument("--filter", help="an MLflow filter expression over cell runs (with or without --sweep)")
    parser.add_argument("--out-dir", default="outputs", help="the run's out_dir: its MLflow store (default: outputs)")
    parser.add_argument("--tracking-uri", help="an MLflow tracking URI (default: sqlite:///<out_dir>/mlflow.db)")
    parser.add_argument("--experiment", default="harness")
    parser.add_argument("--table", required=True, help="the table's title, or a unique part of it")
    parser.add_argument("--column", action="append", required=True, help="a column's header (without the arrow) or key; repeatable")
    parser.add_argument("rows", nargs=2, metavar="ROW", help="the two rows' method labels (with ' K=<K>' where needed): the second minus the first")
    args = parser.parse_args(argv)
    if (study := load_study(args)) is None:
        return 2
    tables = paper_tables(study.records)
    if "budget" in args.table.lower():  # its curves are read from each probed cell's artifact: only when asked
        tables += attack_budget(study.records, probe_artifact(study.tracking_uri))
    try:
        table = find_table(tables, args.table)
        lines = [compare(table, *args.rows, column).line(*args.rows) for column in args.column]
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{study.name}, {table.title}:")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
