"""The paper's Fig. 2 (Pauli et al., L4DC 2023) with lipdsl: bounds and times of every method, two nets.

Left: a fully convolutional net, channels [1, 3, 5, 10], kernels 3 (causal), ReLU between the convs, random
kernels (seed 0), input lengths N = 3 ... 60. The dissipative bound holds for every N (one value, also
computed with --lift); naive and LipSDP-Neuron/-Layer are computed on the network unrolled for each N.
Right: the deep CNN 1x128 -> conv k3 causal ReLU -> avgpool 2 -> conv k3 ReLU -> avgpool 2 -> flatten ->
dense 5, channels [2,4], [4,8], ..., [12,24] (random weights, seed 0): bounds and times divided by the
dissipative method's.

LipSDP is one LMI of n0 + sum(hidden) rows on the unrolled net, solved by lipdsl's HKM interior-point method
(lipdsl/solvers/hkm.py) after an exact chordal split into clique LMIs where the net is banded in time
(the fully conv
net: 540 rows at N = 60 -> four blocks of <= 158 rows; the deep CNNs' dense output layer is lifted into 5 rows
shared by every clique). Each LipSDP solve is predicted from the ones measured before it (t = a rows^p, fitted
per mode) and skipped with a printed note when the prediction exceeds --cap seconds or the remaining --budget.

    nice python bench/fig2.py                # ~10 min on 2 shared cores; writes bench/out/fig2_*.png, .csv
    python bench/fig2.py --quick             # a smoke run (few N, two deep nets, no LipSDP above 200 rows)

Figures are copied to docs/fig2_left.png and docs/fig2_right.png (shown in the README).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from lipdsl.methods import lipsdp_rows, run_method  # noqa: E402
from lipdsl.baselines.empirical import lower_bound  # noqa: E402
from lipdsl.lang.load import load_network  # noqa: E402
from _table import write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
DOCS = ROOT / "docs"

PAPER = {  # normalised to the paper's method (its Fig. 2, middle/right) and its fully conv net at N = 60
    "lipsdp-neuron": "0.57-0.75", "lipsdp-layer": "0.70-0.91", "naive": "1.25-1.94", "time": "5-108x slower",
    "N60": {"dissipative": 140.3, "lipsdp-neuron": 135.9, "lipsdp-layer": 145.6, "naive": 191.9},
}
EXPONENT = 3.0  # prior LipSDP time ~ rows^3 until three solves are measured (then fitted)


def write_spec(directory: Path, name: str, text: str, weights: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / f"{name}.npz", **weights)
    path = directory / f"{name}.lip"
    path.write_text(f"network {name}\n" + text.replace("WEIGHTS", f'weights "{name}.npz"'))
    return path


def fully_conv(directory: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    ch = [1, 3, 5, 10]
    w = {f"c{i + 1}": rng.standard_normal((ch[i + 1], ch[i], 3)) for i in range(3)}
    return write_spec(directory, "fig2_fully_conv", """input 1 x *
WEIGHTS
conv1d c1: 1 -> 3, kernel 3, padding causal, weight c1
relu
conv1d c2: 3 -> 5, kernel 3, padding causal, weight c2
relu
conv1d c3: 5 -> 10, kernel 3, padding causal, weight c3
""", w)


def deep_cnn(directory: Path, c1: int, c2: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w = {"conv1": rng.standard_normal((c1, 1, 3)), "conv2": rng.standard_normal((c2, c1, 3)),
         "fc": rng.standard_normal((5, c2 * 32))}
    return write_spec(directory, f"fig2_deep_{c1}_{c2}", f"""input 1 x 128
WEIGHTS
conv1d conv1: 1 -> {c1}, kernel 3, padding causal, weight conv1
relu
avgpool 2
conv1d conv2: {c1} -> {c2}, kernel 3, padding causal, weight conv2
relu
avgpool 2
flatten
dense fc: {c2 * 32} -> 5, weight fc
""", w)


class Budget:
    """Remaining seconds, and the fitted LipSDP time model ``t = a[mode] rows^EXPONENT``."""

    def __init__(self, total: float, cap: float, max_rows: int | None):
        self.end = time.perf_counter() + total
        self.cap = cap
        self.max_rows = max_rows
        self.a: dict[str, list[float]] = {}

    def left(self) -> float:
        return self.end - time.perf_counter()

    def predict(self, mode: str, rows: int) -> float | None:
        """``t = a rows^p`` fitted (log-log least squares) to this mode's last solves; ``p`` in [2, 4.5]."""
        pts = self.a.get(mode, [])[-4:]
        if not pts:
            return None
        r, t = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
        p = EXPONENT if len(pts) < 3 or np.ptp(r) < 0.3 else float(np.clip(np.polyfit(r, t, 1)[0], 2.0, 4.5))
        return float(np.exp(np.max(t - p * r)) * rows ** p)

    def learn(self, mode: str, rows: int, seconds: float) -> None:
        if rows >= 50:  # tiny LMIs are dominated by set-up time
            self.a.setdefault(mode, []).append((rows, seconds))

    def why_skip(self, mode: str, rows: int) -> str | None:
        if self.max_rows is not None and rows > self.max_rows:
            return f"{rows} rows > --max-rows {self.max_rows}"
        t = self.predict(mode, rows)
        if t is not None and t > self.cap:
            return f"{rows} rows, predicted {t:.0f} s > cap {self.cap:.0f} s"
        if t is not None and t > self.left():
            return f"{rows} rows, predicted {t:.0f} s > remaining budget {self.left():.0f} s"
        if self.left() <= 0:
            return "budget used up"
        return None


def lipsdp_point(net, mode: str, length, budget: Budget, log) -> dict:
    rows = lipsdp_rows(net, length)
    why = budget.why_skip(mode, rows)
    if why is not None:
        log(f"  skip lipsdp-{mode} ({net.name}, N={length}): {why}")
        return {"method": f"lipsdp-{mode}", "bound": None, "seconds": None, "status": "skipped", "rows": rows,
                "note": why}
    r = run_method(net, f"lipsdp-{mode}", length=length, force=True)
    if r.ok:
        budget.learn(mode, rows, r.seconds)
    log(f"  lipsdp-{mode:6s} {net.name} N={length}: {r.bound} ({r.status}) {r.seconds:.2f} s, {rows} rows")
    return {"method": r.method, "bound": r.bound, "seconds": r.seconds, "status": r.status, "rows": rows,
            "note": r.note}


def row_of(r, **extra) -> dict:
    return {"method": r.method, "bound": r.bound, "seconds": r.seconds, "status": r.status,
            "rows": r.lmi_rows, "note": r.note, **extra}


def run_left(budget: Budget, lengths, lipsdp_lengths, lifts, log) -> tuple[list[dict], dict]:
    _, net = load_network(fully_conv(OUT / "fig2_specs"))
    rows: list[dict] = []
    run_method(net, "dissipative")  # warm-up: the first solve in a process also imports sympy, picos, cvxopt
    d = run_method(net, "dissipative")
    log(f"fully conv: dissipative {d.bound:.6g} ({d.status}) {d.seconds:.2f} s, every N")
    diss = {1: d}
    rows.append(row_of(d, panel="left", N="any", lift=1))
    for L in lifts:
        if budget.left() < 60:
            break
        r = run_method(net, "dissipative", lift=L, timeout=min(120.0, budget.left()))
        log(f"fully conv: dissipative --lift {L}: {r.bound} ({r.status}) {r.seconds:.2f} s")
        rows.append(row_of(r, panel="left", N="any", lift=L))
        if r.ok:
            diss[L] = r
    hinf = run_method(net, "naive-hinf")
    rows.append(row_of(hinf, panel="left", N="any", lift=""))
    for n in lengths:
        r = run_method(net, "naive", length=n)
        rows.append(row_of(r, panel="left", N=n, lift=""))
    for n in lipsdp_lengths:
        for mode in ("layer", "neuron"):
            rows.append({**lipsdp_point(net, mode, n, budget, log), "panel": "left", "N": n, "lift": ""})
    return rows, {"dissipative": diss, "net": net}


def run_right(budget: Budget, channels, lower_budget, log) -> list[dict]:
    rows: list[dict] = []
    for c1, c2 in channels:
        _, net = load_network(deep_cnn(OUT / "fig2_specs", c1, c2))
        tag = f"{c1}/{c2}"
        for solver in ("sdpa", "cvxopt"):
            r = run_method(net, "dissipative", solver=solver, timeout=min(300.0, max(budget.left(), 30.0)))
            log(f"deep {tag}: dissipative ({solver}) {r.bound} ({r.status}) {r.seconds:.2f} s")
            rows.append(row_of(r, panel="right", N=128, channels=tag, solver=solver))
            if solver == "sdpa" and c1 > 2:
                break  # CVXOPT's structured KKT grows with the flatten's rank-two terms: 33 s already at 6/12
        for m in ("naive", "naive-hinf"):
            rows.append(row_of(run_method(net, m), panel="right", N=128, channels=tag, solver=""))
        for mode in ("layer", "neuron"):
            rows.append({**lipsdp_point(net, mode, None, budget, log), "panel": "right", "N": 128,
                         "channels": tag, "solver": "hkm"})
        if lower_budget > 0:
            lb = lower_bound(net, starts=8, time_budget=lower_budget)
            rows.append({"method": "lower", "bound": lb.value, "seconds": lb.seconds, "status": "witnessed",
                         "panel": "right", "N": 128, "channels": tag, "solver": ""})
    return rows


def best(rows, method, **match):
    """The dissipative row to normalise by: the fastest certified solver's (same bound, tolerance-level)."""
    cands = [r for r in rows if r["method"] == method and r["bound"] is not None
             and all(r.get(k) == v for k, v in match.items())]
    return min(cands, key=lambda r: r["seconds"]) if cands else None


def plot_left(rows, diss, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_b, ax_t) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"naive": ("tab:gray", "s"), "lipsdp-layer": ("tab:orange", "^"),
              "lipsdp-neuron": ("tab:green", "o")}
    for m, (col, mk) in styles.items():
        pts = [(r["N"], r["bound"], r["seconds"]) for r in rows
               if r["method"] == m and r["panel"] == "left" and r["bound"] is not None]
        if pts:
            n, b, t = zip(*pts)
            ax_b.plot(n, b, marker=mk, ms=3, color=col, label=m)
            ax_t.plot(n, t, marker=mk, ms=3, color=col, label=m)
    n_max = max(r["N"] for r in rows if r["method"] == "naive")
    for L, r in sorted(diss.items()):
        ls = "-" if L == 1 else ":"
        lab = "dissipative (every N)" if L == 1 else f"dissipative --lift {L}"
        ax_b.axhline(r.bound, color="tab:blue", ls=ls, lw=1.5 if L == 1 else 1, label=lab)
        ax_t.axhline(r.seconds, color="tab:blue", ls=ls, lw=1.5 if L == 1 else 1, label=lab)
    ax_b.set_xlabel("input length N")
    ax_b.set_ylabel("Lipschitz upper bound")
    ax_b.set_title("fully conv net [1,3,5,10], k=3: bound")
    ax_t.set_xlabel("input length N")
    ax_t.set_ylabel("time [s]")
    ax_t.set_yscale("log")
    ax_t.set_title("time (2 shared cores, CVXOPT)")
    ax_b.set_xlim(0, n_max + 2)
    ax_t.set_xlim(0, n_max + 2)
    ax_b.legend(fontsize=8)
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def normalised(rows, channels):
    """Per channel pair: (bound ratio, time ratio) of every method against the dissipative method."""
    out = {}
    for c1, c2 in channels:
        tag = f"{c1}/{c2}"
        d = best(rows, "dissipative", channels=tag)
        if d is None:
            continue
        for r in rows:
            if r.get("channels") == tag and r["bound"] is not None and r["method"] != "dissipative":
                out.setdefault(r["method"], []).append(
                    (tag, r["bound"] / d["bound"],
                     None if r["method"] == "lower" else r["seconds"] / d["seconds"]))
    return out


def plot_right(rows, channels, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = normalised(rows, channels)
    tags = [f"{a}/{b}" for a, b in channels]
    x = {t: i for i, t in enumerate(tags)}
    fig, (ax_b, ax_t) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"naive": ("tab:gray", "s"), "naive-hinf": ("tab:brown", "D"),
              "lipsdp-layer": ("tab:orange", "^"),
              "lipsdp-neuron": ("tab:green", "o"), "lower": ("k", "x")}
    for m, (col, mk) in styles.items():
        pts = norm.get(m, [])
        if not pts:
            continue
        ax_b.plot([x[t] for t, _, _ in pts], [b for _, b, _ in pts], marker=mk, color=col, label=m)
        tp = [(t, s) for t, _, s in pts if s is not None]
        if tp:
            ax_t.plot([x[t] for t, _ in tp], [s for _, s in tp], marker=mk, color=col, label=m)
    ax_b.axhline(1.0, color="tab:blue", lw=1.5, label="dissipative")
    ax_t.axhline(1.0, color="tab:blue", lw=1.5, label="dissipative")
    for ax in (ax_b, ax_t):
        ax.set_xticks(range(len(tags)), tags)
        ax.set_xlabel("channels (conv1/conv2)")
        ax.legend(fontsize=8)
    ax_b.set_ylabel("bound / dissipative bound")
    ax_b.set_title("deep CNN 1x128: normalised bound")
    ax_t.set_ylabel("time / dissipative time")
    ax_t.set_yscale("log")
    ax_t.set_title("normalised time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=600.0, help="seconds for LipSDP solves in total")
    ap.add_argument("--cap", type=float, default=240.0, help="skip a LipSDP solve predicted above this")
    ap.add_argument("--max-rows", type=int, default=None, help="skip LipSDP LMIs above this many rows")
    ap.add_argument("--quick", action="store_true", help="smoke run: few N, 2 deep nets, LipSDP <= 200 rows")
    ap.add_argument("--no-docs", action="store_true", help="do not copy the figures to docs/")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", flush=True)

    if args.quick:
        lengths, lipsdp_lengths, lifts = [3, 10, 20], [3, 10], [2]
        channels = [(2, 4), (4, 8)]
        args.max_rows = args.max_rows or 200
    else:
        lengths = list(range(3, 61))
        lipsdp_lengths = [3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 35, 40, 50, 60]
        lifts = [2, 4]
        channels = [(2 * i, 4 * i) for i in range(1, 7)]
    budget = Budget(args.budget, args.cap, args.max_rows)
    left, info = run_left(budget, lengths, lipsdp_lengths, lifts, log)
    right = run_right(budget, channels, 2.0 if args.quick else 4.0, log)
    rows = left + right

    fields = ["panel", "N", "channels", "lift", "solver", "method", "bound", "seconds", "status", "rows",
              "note"]
    write_csv(OUT / "fig2.csv", fields, rows, extrasaction="ignore")
    plot_left(left, info["dissipative"], OUT / "fig2_left.png")
    plot_right(right, channels, OUT / "fig2_right.png")
    if not args.no_docs:
        shutil.copy(OUT / "fig2_left.png", DOCS / "fig2_left.png")
        shutil.copy(OUT / "fig2_right.png", DOCS / "fig2_right.png")

    # ---- summary beside the paper's numbers
    d = info["dissipative"][1]
    print(f"\nFully conv net (every N): dissipative {d.bound:.4f} in {d.seconds:.2f} s"
          + "".join(f"; --lift {L}: {r.bound:.4f} ({r.seconds:.2f} s)"
                    for L, r in sorted(info["dissipative"].items()) if L > 1))
    n_last = max((r["N"] for r in left if str(r["method"]).startswith("lipsdp") and r["bound"] is not None),
                 default=None)
    print("  at N = 60 (paper: ours 140.3, Neuron 135.9, Layer 145.6, naive 191.9; "
          "ratios 0.969, 1.038, 1.368):")
    for m in ("lipsdp-neuron", "lipsdp-layer", "naive"):
        pts = [r for r in left if r["method"] == m and r["bound"] is not None]
        if not pts:
            continue
        r = max(pts, key=lambda r: r["N"])
        print(f"    {m:14s} N={r['N']:>2}: {r['bound']:.4f}  ratio {r['bound'] / d.bound:.3f}  "
              f"time {r['seconds']:.2f} s ({r['seconds'] / d.seconds:.0f}x dissipative)")
    if n_last is not None and n_last < 60:
        print(f"    (LipSDP beyond N = {n_last} skipped: see the log above)")
    norm = normalised(right, channels)
    print("\nDeep CNN, normalised to the dissipative bound/time (ours | paper):")
    for m, paper in (("lipsdp-neuron", PAPER["lipsdp-neuron"]), ("lipsdp-layer", PAPER["lipsdp-layer"]),
                     ("naive", PAPER["naive"]), ("naive-hinf", "-"), ("lower", "-")):
        pts = norm.get(m, [])
        if not pts:
            print(f"  {m:14s} bound ratio   -          | paper {paper}  (not run: see the log)")
            continue
        b = [p[1] for p in pts]
        t = [p[2] for p in pts if p[2] is not None]
        ts = f", time {min(t):.0f}-{max(t):.0f}x" if t else ""
        print(f"  {m:14s} bound ratio {min(b):.3f}-{max(b):.3f} over {', '.join(p[0] for p in pts)}{ts} "
              f"| paper {paper}")
    print(f"  (paper: LipSDP {PAPER['time']})")
    print(f"\nwrote {OUT / 'fig2.csv'}, {OUT / 'fig2_left.png'}, {OUT / 'fig2_right.png'} "
          f"in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
