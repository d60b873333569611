"""Certificates of the 59 ECG models: solve, write the certificate, verify it in floating point and exactly.

Prints one row per model (certified bound, proved bound, verify times) and a summary; writes
bench/out/certificate.csv. Usage: python bench/certificate.py [--backend flint|sympy] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from lipdsl.certify import certificate  # noqa: E402
from lipdsl.pipeline import solve_network  # noqa: E402
from lipdsl.certify.verify import verify  # noqa: E402
from nets import ecg_from_npz  # noqa: E402
from _table import all_keys, write_csv  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", default="auto", choices=["auto", "flint", "sympy"])
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    cases = Path("/work/shared/cases/ecg")
    if not cases.is_dir():
        cases = ROOT / "tests" / "data" / "ecg"
    files = sorted(cases.glob("*.npz"))
    ref_file = cases / "reference.json"
    reference = json.loads(ref_file.read_text()) if ref_file.exists() else {}
    rows = []
    for f in files[: args.limit]:
        net = ecg_from_npz(f)
        result = solve_network(net)
        cert = result.certificate
        row = {"model": f.stem, "certified": cert.lipschitz if cert.verified else None}
        if cert.verified:
            doc = certificate.build(result, options=certificate.solve_options(None, 1, True, None, "cvxopt"))
            t = time.perf_counter()
            vf = verify(net, doc)
            row["float_s"] = time.perf_counter() - t
            t = time.perf_counter()
            ve = verify(net, doc, exact=True, backend_name=args.backend)
            row["exact_s"] = time.perf_counter() - t
            row.update(float_ok=vf.ok, exact_ok=ve.ok, proved=ve.bound_text, rho_raise=ve.rho_raise,
                       reason=ve.reason or vf.reason)
        ref = reference.get(f.stem)
        if isinstance(ref, dict):
            ref = ref.get("lipschitz_reference")
        row["reference"] = ref if isinstance(ref, (int, float)) else None
        rows.append(row)
        print(" | ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    write_csv(out / "certificate.csv", all_keys(rows), rows)
    proved = [r for r in rows if r.get("exact_ok")]
    ex = [r["exact_s"] for r in rows if "exact_s" in r]
    print(f"{len(proved)}/{len(rows)} proved exactly; exact verify median {statistics.median(ex):.3f} s, "
          f"max {max(ex):.3f} s; float verify max {max(r['float_s'] for r in rows if 'float_s' in r):.4f} s; "
          f"rho raised for {sum(1 for r in rows if r.get('rho_raise'))}")
    return 0 if len(proved) == len(rows) else 3


if __name__ == "__main__":
    sys.exit(main())
