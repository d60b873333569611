"""CVXOPT vs SCS (issue 20): the same specs solved by `--solver cvxopt` and `--solver scs` in one process,
certified bounds, CPU and wall times, and their ratios.

    OMP_NUM_THREADS=1 python bench/scs.py [SPEC ...] [--eps 1e-6] [--weight-rank auto|full|R] [--timeout S]

Each spec goes through ``solve_network`` (the CLI's pipeline: frequency form, grid refinement, storage
recovery, certify) once per solver; SCS first converts the SDP to its cones (frequency LMIs as complex
``'cs'`` cones, ``lipdsl.solvers.scs_backend``). ``--eps`` sets SCS's ``eps_abs = eps_rel`` (default: the
backend's ``TOL_FACTOR`` times the pipeline's tol, 1e-4). CPU time is the process's (``time.process_time``),
fair on a shared machine; peak memory is not separable in one process (bench/wide.py runs the CLI per case
for that). Without SPECs: ECG and the
trained FCN 32/64/32.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_SPECS = [ROOT / "specs" / "ecg.lip", ROOT / "specs" / "fcn_32_64_32.lip"]


def run(spec: Path, solver: str, weight_rank, timeout: float | None) -> dict:
    """One certified solve: bound, solver value, repair, iterations, CPU and wall seconds."""
    from lipdsl.errors import LipdslError
    from lipdsl.lang.load import load_network
    from lipdsl.pipeline import solve_network

    _, net = load_network(spec)
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        result = solve_network(net, solver=solver, weight_rank=weight_rank, timeout=timeout,
                               accept_unconverged=True)
    except LipdslError as exc:
        return {"error": exc.message, "cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}
    cert, sol = result.certificate, result.solution
    return {"bound": cert.lipschitz if cert.verified else None, "solver_value": cert.lipschitz_solver,
            "repair": cert.inflation, "iterations": sol.iterations, "status": sol.claimed_status,
            "cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}


def row(name: str, solver: str, r: dict) -> str:
    if "error" in r:
        return f"| {name} | {solver} | - | - | - | - | {r['cpu']:.1f} | {r['wall']:.1f} | {r['error'][:60]} |"
    bound = "not certified" if r["bound"] is None else f"{r['bound']:.6g}"
    repair = "-" if r["repair"] is None else f"{100 * r['repair']:.3g} %"
    return (f"| {name} | {solver} | {bound} | {r['solver_value']:.6g} | {repair} | {r['iterations']} | "
            f"{r['cpu']:.1f} | {r['wall']:.1f} | {r['status']} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="*", type=Path, default=DEFAULT_SPECS)
    ap.add_argument("--eps", type=float, default=None, help="SCS eps_abs = eps_rel (default: the backend's)")
    ap.add_argument("--weight-rank", default="auto", help="auto, full or a rank (as lipdsl solve)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per solve")
    args = ap.parse_args(argv)
    from lipdsl.solvers import scs_backend

    if args.eps is not None:
        scs_backend.TOL_FACTOR = args.eps / 1e-7  # (solve_network's default tol)
    rank = None if args.weight_rank == "full" else args.weight_rank
    print("| spec | solver | certified | solver value | repair | iterations | CPU s | wall s | status |")
    print("|---|---|---|---|---|---|---|---|---|")
    for spec in args.specs:
        results = {s: run(spec, s, rank, args.timeout) for s in ("cvxopt", "scs")}
        for solver, r in results.items():
            print(row(spec.stem, solver, r), flush=True)
        a, b = results["cvxopt"], results["scs"]
        if a.get("bound") and b.get("bound"):
            print(f"| {spec.stem} | scs / cvxopt | {b['bound'] / a['bound']:.5f} | | | | "
                  f"{b['cpu'] / a['cpu']:.2f} | {b['wall'] / a['wall']:.2f} | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
