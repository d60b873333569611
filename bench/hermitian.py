"""Frequency LMIs in complex arithmetic (issues 19, 20): CVXOPT's cone operations on the Hermitian matrices of
half the order (``lipdsl.solvers.cvxopt_cones``) against the real embedding, the same SDP in one process.

    OMP_NUM_THREADS=1 python bench/hermitian.py [SPEC ...] [--frequencies K]

Each spec is lowered and built once in frequency form (``build_sdp(frequencies=K)``, full X) and solved twice
by ``--solver cvxopt`` at tol 1e-7: first with every LMI treated as real (``Lmi.hermitian`` reported False),
the baseline, then as the default does. Prints the iterations, the solver value (the two must agree), the
wall and CPU seconds of each solve and their ratios (also to ``bench/out/hermitian.csv``). The solve only:
no storage recovery, no refinement.
Without SPECs: specs/tcn.lip and specs/resnet1d.lip (about 2.5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _table import write_csv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_SPECS = [ROOT / "specs" / "tcn.lip", ROOT / "specs" / "resnet1d.lip"]


def solve_once(sdp, hermitian: bool) -> dict:
    """One solve of ``sdp``; ``hermitian=False`` marks no LMI Hermitian (the real embedding throughout)."""
    from lipdsl.sdp import problem
    from lipdsl.solvers.solve import solve

    saved = problem.Lmi.hermitian
    if not hermitian:
        problem.Lmi.hermitian = property(lambda self: False)
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        sol = solve(sdp, "cvxopt", tol=1e-7, max_iterations=100)
        return {"iterations": sol.iterations, "rho": sol.rho, "status": sol.claimed_status,
                "cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}
    finally:
        problem.Lmi.hermitian = saved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="*", type=Path, default=DEFAULT_SPECS)
    ap.add_argument("--frequencies", type=int, default=17)
    args = ap.parse_args(argv)

    from lipdsl.lang.load import load_network
    from lipdsl.pipeline import lower_within_limits
    from lipdsl.sdp.build import build_sdp

    print("| spec | Hermitian LMIs | real: it. / wall / CPU | complex: it. / wall / CPU | wall ratio "
          "| CPU ratio | solver values |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for spec in args.specs:
        _, net = load_network(spec)
        low = lower_within_limits(net, frequencies=args.frequencies)
        sdp = build_sdp(low, frequencies=args.frequencies)
        marked = sum(lmi.hermitian for lmi in sdp.lmis)
        real, herm = solve_once(sdp, False), solve_once(sdp, True)
        agree = abs(herm["rho"] - real["rho"]) <= 1e-8 * abs(real["rho"])
        print(f"| {spec.name} | {marked} of {len(sdp.lmis)} "
              f"| {real['iterations']} / {real['wall']:.1f} s / {real['cpu']:.1f} s "
              f"| {herm['iterations']} / {herm['wall']:.1f} s / {herm['cpu']:.1f} s "
              f"| {herm['wall'] / real['wall']:.3f} | {herm['cpu'] / real['cpu']:.3f} "
              f"| {'agree' if agree else 'DIFFER'} ({real['rho']:.10g}, {herm['rho']:.10g}) |", flush=True)
        rows.append({"spec": spec.name, "hermitian_lmis": marked, "lmis": len(sdp.lmis),
                     **{f"real_{k}": v for k, v in real.items()},
                     **{f"complex_{k}": v for k, v in herm.items()}})
    out = ROOT / "bench" / "out" / "hermitian.csv"
    out.parent.mkdir(exist_ok=True)
    write_csv(out, list(rows[0]), rows)
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
