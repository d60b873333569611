"""Benchmark `lipdsl check` on 1 MB specs of `let` names and inline tensors (issue 17: <= 1 MB in < 2 s).

    nice python bench/check_speed.py [--size 1000000] [--repeat 3] [--cli] [--out bench/out]

Each case is one generated spec of about ``--size`` bytes:

- ``numbers``: one inline weight tensor of plain numbers (300 x ~300 dense layer): the parser's fast path, the
  baseline every other case is divided by (same process, same size);
- ``let-plain``: 1,900 ``let aK = <decimal>`` lines and a dense weight tensor of those names (signed, on
  several lines);
- ``let-exact``: the same with ``let aK = K/7`` (values that need exact arithmetic);
- ``let-one``: ``let a = 1/3`` and a tensor of 333,333 ``a`` (``bench/fuzz.py``'s case);
- ``mixed``: a tensor alternating plain numbers and names bound to plain numbers;
- ``let-long``: about 1 MB of ``let`` lines (1,900 lets, each a long sum of decimals, exact) and a small
  tensor of them;
- ``let-names``: about 1 MB of ``let`` lines that use earlier names (``let a7 = a3 * 0.25 + a1 * 0.5 + ...``:
  ast.Deferred values, evaluated by check with Fractions).

Prints, per case, the in-process parse + check time (best of ``--repeat``) and its ratio to ``numbers``; with
``--cli`` also the whole ``python -m lipdsl check FILE`` process (start-up included: what a user waits for,
best of ``--repeat``) against the 2 s target. Writes bench/out/check_speed.csv.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _table import write_csv

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 2.0
LETS = 1900  # below parse.MAX_STATEMENTS (2000), with room for the input and layer lines


def _tensor(entries: list[str], per_row: int = 40) -> str:
    rows = [", ".join(entries[i:i + per_row]) for i in range(0, len(entries), per_row)]
    return "[[" + ",\n  ".join(rows) + "]]"


def _dense(entries: list[str]) -> str:
    n = len(entries)
    return f"input {n}\ndense d: {n} -> 1, weight {_tensor(entries)}\n"


def _fill(head: str, size: int, entry) -> str:
    """``head`` and a dense layer whose tensor entries ``entry(i)`` bring the spec to ~``size`` bytes."""
    entries, total, i = [], len(head) + 40, 0
    while total < size:
        e = entry(i)
        entries.append(e)
        total += len(e) + 2
        i += 1
    return head + _dense(entries)


def specs(size: int = 1_000_000) -> dict[str, str]:
    """The benchmark's specs, label -> text, each about ``size`` bytes."""
    rng = np.random.default_rng(0)
    n = int(np.sqrt(size / 10.5))
    rows = ",\n ".join("[" + ", ".join(f"{v:.6f}" for v in rng.standard_normal(n)) + "]" for _ in range(n))
    out = {"numbers": f"input {n}\ndense d: {n} -> {n}, weight [{rows}]\nrelu\n"}
    plain = "".join(f"let a{k} = {v:.6g}\n" for k, v in enumerate(rng.standard_normal(LETS)))
    picks = rng.integers(0, LETS, size)
    signs = rng.choice(["", "-", "+"], size, p=[0.6, 0.3, 0.1])
    out["let-plain"] = _fill(plain, size, lambda i: f"{signs[i]}a{picks[i]}")
    exact = "".join(f"let a{k} = {k + 1}/7\n" for k in range(LETS))
    out["let-exact"] = _fill(exact, size, lambda i: f"{signs[i]}a{picks[i]}")
    out["let-one"] = _fill("let a = 1/3\n", size, lambda i: "a")
    values = rng.standard_normal(size)
    out["mixed"] = _fill(plain, size, lambda i: f"{values[i]:.5f}" if i % 2 else f"{signs[i]}a{picks[i]}")
    terms = max(1, (size // LETS - 12) // 9)
    lets = "".join(f"let a{k} = " + " + ".join(f"{v:.4f}" for v in rng.uniform(0, 1, terms)) + "\n"
                   for k in range(LETS))
    out["let-long"] = lets + _dense([f"a{k}" for k in range(LETS)])
    named = "let a0 = 0.5\n" + "".join(
        f"let a{k} = " + " + ".join(f"a{j} * {v:.3f}" for j, v in zip(rng.integers(0, k, terms // 2),
                                                                    rng.uniform(0, 1, terms // 2))) + "\n"
        for k in range(1, LETS))
    out["let-names"] = named + _dense([f"a{k}" for k in range(LETS)])
    return out


def time_in_process(text: str, repeat: int) -> float:
    """Best parse + check time of ``text`` (``lipdsl.lang.load.check_source``), seconds."""
    from lipdsl.lang.load import check_source
    from lipdsl.lang.source import Source

    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        check_source(Source("<bench>", text))
        best = min(best, time.perf_counter() - t0)
    return best


def time_cli(path: Path, repeat: int) -> float:
    """Best wall time of ``python -m lipdsl check path`` (a fresh process: imports included), seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lipdsl", "check", str(path)], check=True,
                       stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1_000_000, help="bytes per spec")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cli", action="store_true",
                    help="also time `python -m lipdsl check` in a fresh process")
    ap.add_argument("--cases", nargs="*", default=None, help="labels to run (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args()
    cases = specs(args.size)
    labels = [k for k in cases if args.cases is None or k in args.cases or k == "numbers"]
    time_in_process("input 1\ndense d: 1 -> 1, weight [[1]]\n", 1)  # imports and Lark's tables, once
    rows = []
    base = base_cli = None
    cli_head = f" {'CLI s':>7} {'< 2 s':>6}" if args.cli else ""
    print(f"{'case':10} {'MB':>5} {'check s':>8} {'/numbers':>9}{cli_head}")
    with tempfile.TemporaryDirectory() as tmp:
        for label in labels:
            text = cases[label]
            seconds = time_in_process(text, args.repeat)
            base = seconds if label == "numbers" else base
            row = {"case": label, "bytes": len(text.encode()), "check_s": seconds, "ratio": seconds / base}
            line = f"{label:10} {len(text) / 1e6:5.2f} {seconds:8.3f} {seconds / base:9.2f}"
            if args.cli:
                path = Path(tmp) / f"{label}.lip"
                path.write_text(text)
                wall = time_cli(path, args.repeat)
                base_cli = wall if label == "numbers" else base_cli
                row.update(cli_s=wall, cli_ratio=wall / base_cli, within_target=wall < TARGET_SECONDS)
                line += f" {wall:7.3f} {'yes' if wall < TARGET_SECONDS else 'NO':>6}"
            print(line, flush=True)
            rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "check_speed.csv", list(rows[-1]), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
