"""The README's tuned tables are copied from the regime matrix's records (docs/figures/regimes/matrix.json):
every "accuracy (pick×, seeds)" cell of a regime's row must be one of that regime's arms as recorded, so
a number cannot go stale when more seeds finish or a grid is widened."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MATRIX = ROOT / "docs/figures/regimes/matrix.json"
CELL = re.compile(r"(\d+\.\d\d)\*{0,2} \((\d+(?:\.\d+)?)×(?:, (\d+))?\)")  # 39.08 (0.5×, 5), **40.15** (1×, 5), 33.31 (1×)
ROW = re.compile(r"^\| \[([\w.-]+)\]\(")  # a table row that starts with a linked regime name


def readme_cells() -> list[tuple[str, float, float, int | None]]:
    cells = []
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        row = ROW.match(line)
        if row:
            cells += [(row.group(1), float(acc), float(pick), int(seeds) if seeds else None)
                      for acc, pick, seeds in CELL.findall(line)]
    return cells


@pytest.mark.skipif(not MATRIX.is_file(), reason="no regime matrix records in this checkout")
def test_every_tuned_number_in_the_readme_is_a_recorded_arm_at_its_pick() -> None:
    matrix = json.loads(MATRIX.read_text())
    cells = readme_cells()
    assert len(cells) >= 20, "the README's tuned tables were not found: has their layout changed?"
    for regime, accuracy, pick, seeds in cells:
        assert regime in matrix["regimes"], f"README names a regime the matrix does not have: {regime}"
        recorded = [(round(c["test_mean"], 2), c["lr_pick"], c["n"]) for c in matrix["cells"]
                    if c["regime"] == regime and c.get("test_mean") is not None]
        assert any(acc == accuracy and lr == pick and (seeds is None or n == seeds) for acc, lr, n in recorded), (
            f"README's {regime} cell {accuracy} ({pick}×, {seeds} seeds) matches no recorded arm: {recorded}")
