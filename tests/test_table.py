"""The paper table: cells that differ only by seed become one row of mean ± sd."""

from __future__ import annotations

from harness.table import markdown, over_seeds


def row(seed, fid, state="completed", method="distill only", ratio=0.1):
    return {"method": method, "concepts": "stripes", "ratio": ratio, "K": "", "seed": seed, "cell": f"c{seed}{ratio}",
            "state": state, "params (M)": 0.5, "fid": fid, "presence_erased": 40.0 + seed}


def test_seeds_make_one_row_of_mean_and_sd():
    rows = over_seeds([row(0, 1.0), row(1, 2.0), row(2, 3.0), row(0, 5.0, ratio=0.2)])
    assert len(rows) == 2
    three = next(r for r in rows if r["ratio"] == 0.1)
    assert three["seeds"] == 3 and three["fid"] == (2.0, 1.0) and three["presence_erased"] == (41.0, 1.0)
    assert next(r for r in rows if r["ratio"] == 0.2)["seeds"] == 1
    assert "| 2 ± 1 |" in markdown([row(0, 1.0), row(1, 2.0), row(2, 3.0)])


def test_a_missing_seed_is_flagged_not_dropped():
    rows = over_seeds([row(0, 1.0), row(1, 3.0), row(2, None, state="failed")])
    assert rows[0]["state"] == "2/3 seeds completed" and rows[0]["fid"] == (2.0, 2 ** 0.5)
    assert "*2/3 seeds completed*" in markdown([row(0, 1.0), row(1, 3.0), row(2, None, state="failed")])
