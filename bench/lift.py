"""Benchmark the lifting knob: bound and time of `--lift L` (L = 1, 2, 4, 8) against L = 1, same process.

    python bench/lift.py [--lifts 1 2 4 8] [--out bench/out]

Cases: the three ECG models with the authors' reference values, and the paper's Fig. 2 deep CNN (input 1x128,
conv k3 causal ReLU, avgpool 2, conv k3 ReLU, avgpool 2, flatten, dense to 5) with channels [2, 4] and [4, 8]
and random weights (seed 0). Prints bound(L)/bound(1) and time(L)/time(1), and for the deep CNNs also
bound(L)/LipSDP-Neuron (the unrolled net's LipSDP, solved once, its time printed) - the tightness the lift
approaches; writes a CSV and, if matplotlib is installed, bench/out/lift.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from lipdsl.pipeline import solve_network  # noqa: E402
from lipdsl.baselines.lipsdp import lipsdp  # noqa: E402
from nets import Builder, ecg  # noqa: E402
from _table import write_csv  # noqa: E402


def deep_cnn(c1: int, c2: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    b = Builder(1, 128, name=f"deep_{c1}_{c2}")
    b.conv(rng.normal(size=(c1, 1, 3)) / np.sqrt(3), padding="causal").act("relu").pool("avg", 2)
    b.conv(rng.normal(size=(c2, c1, 3)) / np.sqrt(3 * c1), padding="causal").act("relu").pool("avg", 2)
    b.flatten().dense(rng.normal(size=(5, b.shape.size)) / np.sqrt(b.shape.size))
    return b.build()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lifts", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = [
        (name, ecg(name)) for name in ("CNN_23_03_08_11_52", "CNN_23_03_08_12_42", "CNN_L2_23_03_08_04_10")
    ]
    cases += [("fig2_deep_2_4", deep_cnn(2, 4)), ("fig2_deep_4_8", deep_cnn(4, 8))]
    rows = []
    print(f"{'case':24} {'L':>3} {'bound':>14} {'bound/L1':>9} {'time s':>8} {'time/L1':>8} {'/neuron':>8} "
          f"{'LMI rows':>14}")
    for name, net in cases:
        base = None
        neuron = None
        if name.startswith("fig2"):
            t0 = time.perf_counter()
            res = lipsdp(net, "neuron")
            neuron = res.bound if res.status == "verified" else None
            print(f"{name:24} LipSDP-Neuron {res.bound} ({res.status}, {res.lmi_size} rows) in "
                  f"{time.perf_counter() - t0:.1f} s")
        for L in args.lifts:
            t0 = time.perf_counter()
            r = solve_network(net, lift=L)
            sec = time.perf_counter() - t0
            c = r.certificate
            if base is None:
                base = (c.lipschitz, sec)
            rows.append(
                {
                    "case": name,
                    "lift": L,
                    "bound": c.lipschitz,
                    "certified": c.verified,
                    "seconds": sec,
                    "bound_ratio": c.lipschitz / base[0],
                    "time_ratio": sec / base[1],
                    "over_neuron": c.lipschitz / neuron if neuron else None,
                    "lmi_rows": "+".join(str(lmi.size) for lmi in r.sdp.lmis),
                }
            )
            print(
                f"{name:24} {L:3d} {c.lipschitz:14.8g} {c.lipschitz / base[0]:9.4f} {sec:8.2f} "
                f"{sec / base[1]:8.2f} {'' if neuron is None else f'{c.lipschitz / neuron:8.4f}':>8} "
                f"{rows[-1]['lmi_rows']:>14}"
            )
    write_csv(out / "lift.csv", list(rows[0]), rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install '.[plot]')")
        return 0
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, _ in cases:
        rs = [r for r in rows if r["case"] == name]
        a1.plot([r["lift"] for r in rs], [r["bound_ratio"] for r in rs], "o-", label=name)
        a2.plot([r["lift"] for r in rs], [r["seconds"] for r in rs], "o-", label=name)
    a1.set_xlabel("lift L")
    a1.set_ylabel("bound / bound at L = 1")
    a1.set_xscale("log", base=2)
    a2.set_xlabel("lift L")
    a2.set_ylabel("time [s]")
    a2.set_xscale("log", base=2)
    a2.set_yscale("log")
    a1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "lift.png", dpi=120)
    print(f"wrote {out / 'lift.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
