"""Benchmark the LipSDP baselines: lipdsl's HKM method against its CVXOPT driver, same problems, same process.

    python bench/lipsdp.py [--skip-slow-cvxopt] [--out bench/out]

Cases: LipSDP's own random-weights and MNIST nets (Neuron and Layer), the paper's Fig. 2 fully convolutional
net unrolled for N = 60 (chordal split into 4 cliques), the Fig. 2 deep CNN 2/4 (640 rows, split), and the
ECG net (636 rows, not splittable: its dense layer joins every clique). Each problem is built once and solved
by ``hkm.solve_hkm`` and by ``solve.solve(..., "cvxopt")`` (NT scaling, sparse Gram KKT); both points are
certified on the full LMI by ``baselines._certify``. Prints the certified bounds, their relative difference,
the times and time(HKM)/time(CVXOPT); writes bench/out/lipsdp.csv. ``--skip-slow-cvxopt`` leaves out the
ECG CVXOPT solves (about 2 and 4.5 minutes).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "bench"))

from lipdsl.baselines import lipsdp as baselines  # noqa: E402
from lipdsl.solvers.hkm import solve_hkm  # noqa: E402
from lipdsl.app.api import load  # noqa: E402
from lipdsl.solvers.solve import solve  # noqa: E402
from nets import lipsdp_net  # noqa: E402
from _table import all_keys, write_csv  # noqa: E402


def cases():
    import tempfile

    import fig2

    tmp = Path(tempfile.mkdtemp())
    yield "lipsdp random 2-10-30-20-2", lipsdp_net("random_weights"), None, ("neuron", "layer")
    yield "lipsdp mnist 784-50-10", lipsdp_net("mnist_weights"), None, ("neuron", "layer")
    yield "fig2 fully conv N=60", load(fig2.fully_conv(tmp)).typed, 60, ("neuron", "layer")
    yield "fig2 deep 2/4", load(fig2.deep_cnn(tmp, 2, 4)).typed, None, ("neuron", "layer")
    yield "ecg", load(ROOT / "specs" / "ecg.lip").typed, None, ("neuron", "layer")


def certified(data, sol, problem) -> float:
    mats, slopes, out, scale, full = data
    lam = np.maximum(sol.x[problem.lam.slice], 0.0)
    rho, _ = baselines._certify(*full, lam, float(sol.rho))
    return scale * math.sqrt(rho)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-slow-cvxopt", action="store_true", help="no CVXOPT solve for the ECG net")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'case':26} {'mode':6} {'rows':>5} {'blocks':>6} {'HKM bound':>12} {'s':>7} {'CVXOPT bound':>13} "
          f"{'s':>7} {'rel diff':>9} {'HKM/CVXOPT':>10}")
    for name, net, length, modes in cases():
        if net is None:
            print(f"{name}: shared/cases not found, skipped")
            continue
        for mode in modes:
            mats, slopes, outm, scale = baselines._lipsdp_data(net, length)
            if mats[0].shape[1] > mats[0].shape[0]:  # the exact input reduction lipsdp() applies
                U, S, _ = np.linalg.svd(mats[0].toarray(), full_matrices=False)
                mats[0] = sp.csr_matrix(U * S)
            full = baselines._lmi_coefficients(mats, slopes, outm, mode)
            data = (mats, slopes, outm, scale, full)
            problem = baselines.lipsdp_problem(mats, slopes, outm, mode)
            t = time.perf_counter()
            h = solve_hkm(problem, tol=baselines.LIPSDP_HKM_TOL)
            th = time.perf_counter() - t
            bh = certified(data, h, problem)
            row = {"case": name, "mode": mode, "rows": full[3], "blocks": len(problem.lmis), "hkm_bound": bh,
                   "hkm_s": th, "hkm_status": h.claimed_status, "hkm_iterations": h.iterations}
            if not (args.skip_slow_cvxopt and name == "ecg"):
                t = time.perf_counter()
                c = solve(problem, "cvxopt", tol=baselines.LIPSDP_TOL)
                tc = time.perf_counter() - t
                bc = certified(data, c, problem)
                row.update(cvxopt_bound=bc, cvxopt_s=tc, cvxopt_status=c.claimed_status,
                           cvxopt_iterations=c.iterations, rel_diff=(bh - bc) / bc, ratio=th / tc)
            rows.append(row)
            cv = (f"{row['cvxopt_bound']:13.7g} {row['cvxopt_s']:7.2f} {row['rel_diff']:9.1e} "
                  f"{row['ratio']:10.2f}") if "cvxopt_bound" in row else f"{'skipped':>13}"
            print(f"{name:26} {mode:6} {row['rows']:5d} {row['blocks']:6d} {bh:12.7g} {th:7.2f} {cv}",
                  flush=True)
    write_csv(out / "lipsdp.csv", all_keys(rows), rows)
    print(f"wrote {out / 'lipsdp.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
