"""The bench scripts' CSV output (bench/out/*.csv): a header line, then one line a row."""

from __future__ import annotations

import csv
from pathlib import Path


def all_keys(rows: list[dict]) -> list[str]:
    """Every key of any row, sorted: the columns when rows differ in which fields they have."""
    return sorted({k for r in rows for k in r})


def write_csv(path: str | Path, fields: list[str], rows, extrasaction: str = "raise") -> None:
    """Write a header of ``fields`` and then ``rows`` (dicts; a missing key is an empty cell) to ``path``.

    ``extrasaction`` is csv.DictWriter's: "raise" on a key not in ``fields``, or "ignore" it.
    """
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction=extrasaction)
        w.writeheader()
        w.writerows(rows)
