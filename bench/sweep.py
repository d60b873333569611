"""Benchmark `lipdsl sweep`: the 59 ECG models with --jobs 1 and --jobs 2 in one run, against per-model solve.

    python bench/sweep.py [--cases ../shared/cases/ecg] [--repeat 1] [--out bench/out]

Each model is ``specs/ecg.lip``'s architecture with the model's ``.npz`` (keys ``conv1.weight`` ...
``fc2.bias``, as the spec names them), i.e. ``lipdsl sweep --like specs/ecg.lip cases/*.npz``. Prints the
wall time of the whole sweep (``lipdsl.app.sweep.sweep``, no cache: worker start-up included, the forkserver
warm) with one and with two worker processes, their ratio (target <= 0.6), the cores the items' CPU time
amounts to (a loaded machine that shares CPU per session, Linux's autogroup, gives one session the same
share however many processes it runs: then the ratio measures the machine, not the sweep), the certified
count, and the largest relative difference of the swept bounds to ``solve_network`` on the same models in
this process (target <= 1e-12).
With ``--repeat R`` the two sweeps alternate R times and the medians are compared. Writes ``sweep.csv``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from _table import write_csv

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "ecg.lip"


def per_model(files: list[Path]) -> list[float | None]:
    """``solve_network`` of each model, from the spec text retargeted at its file (as a sweep item)."""
    from lipdsl.pipeline import solve_network
    from lipdsl.importers.pytorch import retarget_weights
    from lipdsl.lang.load import check_source
    from lipdsl.lang.parse import parse
    from lipdsl.lang.source import Source

    arch = Source.read(SPEC)
    out = []
    for f in files:
        text = retarget_weights(arch.text, parse(arch), f.name)
        net = check_source(Source(str(SPEC), text), files={f.name: f.read_bytes()})
        cert = solve_network(net).certificate
        out.append(cert.lipschitz if cert.verified else None)
    return out


def main() -> int:
    from lipdsl.app.sweep import sweep

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=str(ROOT.parent / "shared" / "cases" / "ecg"))
    ap.add_argument("--repeat", type=int, default=1, help="alternating runs of --jobs 1 and --jobs 2")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args()
    cases = Path(args.cases)
    fallback = ROOT / "tests" / "data" / "ecg"
    files = sorted(cases.glob("*.npz")) if cases.is_dir() else sorted(fallback.glob("*.npz"))
    print(f"{len(files)} models from {cases if cases.is_dir() else fallback}")
    t0 = time.perf_counter()
    reference = per_model(files)
    print(f"per-model solve in this process: {time.perf_counter() - t0:.1f} s")
    # the workers fork from one forkserver per process, started (and the pipeline imported) by the first
    # sweep: start it before timing, so neither timed sweep pays for it
    sweep(files[:1], like=SPEC, jobs=1, cache=False)
    times: dict[int, list[float]] = {1: [], 2: []}
    results = {}
    for _ in range(args.repeat):
        for jobs in (1, 2):
            t = time.perf_counter()
            res = sweep(files, like=SPEC, jobs=jobs, cache=False)
            times[jobs].append(time.perf_counter() - t)
            results[jobs] = res
            cpu = sum(r.get("item_cpu_seconds", 0.0) for r in res)
            print(f"  --jobs {jobs}: {times[jobs][-1]:.2f} s, {sum(r['status'] == 'certified' for r in res)}"
                  f"/{len(res)} certified; items' CPU time {cpu:.1f} s = {cpu / times[jobs][-1]:.2f} cores "
                  f"on average (load average {os.getloadavg()[0]:.1f})")
    t1, t2 = statistics.median(times[1]), statistics.median(times[2])
    worst = 0.0
    for res in results.values():
        for b, ref in zip(res.bounds, reference):
            if b is None or ref is None:
                worst = float("inf")
            else:
                worst = max(worst, abs(b - ref) / ref)
    certified = all(r["status"] == "certified" for res in results.values() for r in res)
    print(f"sweep --jobs 1: {t1:.2f} s, --jobs 2: {t2:.2f} s (median of {args.repeat}); "
          f"ratio {t2 / t1:.3f} (target <= 0.6)")
    print(f"all certified: {certified}; max relative difference to per-model solve: {worst:.3g} "
          "(target <= 1e-12)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["model", "solve", "sweep_jobs1", "sweep_jobs2", "item_seconds_jobs1", "item_seconds_jobs2"]
    values = [[f.stem, ref, a["lipschitz"], b["lipschitz"], a["item_seconds"], b["item_seconds"]]
              for f, ref, a, b in zip(files, reference, results[1], results[2])]
    write_csv(out / "sweep.csv", fields, [dict(zip(fields, v)) for v in values])
    print(f"wrote {out / 'sweep.csv'}")
    return 0 if certified and worst <= 1e-12 and t2 / t1 <= 0.6 else 1


if __name__ == "__main__":
    sys.exit(main())
