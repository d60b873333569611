"""Memory benchmark: measured peak RSS of `solve_network` against lipdsl's model (lipdsl/limits.py).

    python bench/memory.py [--iterations 2] [--cases small|all] [--out bench/out/memory.csv]

Each case is a generated net (one causal conv layer c -> c with kernel k, ReLU, global average pooling,
a dense head; random weights, seed 0), solved by CVXOPT with lipdsl's structured KKT solver in a fresh
process for ``--iterations`` interior-point iterations (the peak is reached in the first: every iteration
allocates the same arrays). The child's peak resident set size is its own ``VmHWM`` (``/proc/self/status``:
``ru_maxrss`` of a child also counts the parent's size at fork, e.g. a large pytest process); the model's
estimate is ``ProblemSize.memory`` of the same net, as the size guard computes it before allocating.
Cases in the frequency domain (``--frequencies``) exercise the many-LMI part of the model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _table import write_csv

ROOT = Path(__file__).resolve().parents[1]

#: (channels, kernel, frequencies): variables ~ ((k-1) c)^2 / 2 for the exact cases
CASES = {
    "small": [(4, 9, None), (4, 17, None), (4, 23, None), (8, 9, 17), (16, 9, 33)],
    "all": [(4, 9, None), (4, 17, None), (4, 23, None), (4, 28, None), (4, 33, None), (8, 9, 17),
            (16, 9, 33), (32, 9, 33)],
}

CHILD = r"""
import json, sys, time
from lipdsl import limits
limits.available_memory = lambda: 1 << 62   # measure, do not refuse
from lipdsl.lang.load import load_network
from lipdsl.pipeline import solve_network, problem_size
from lipdsl.errors import LipdslError
_, net = load_network(sys.argv[1])
freq = None if sys.argv[2] == "none" else int(sys.argv[2])
size = problem_size(net, 1, freq)
t0 = time.perf_counter()
status = "?"
try:
    r = solve_network(net, max_iterations=int(sys.argv[3]), max_variables=None, max_lmi=None,
                      frequencies=freq, accept_unconverged=True)
    status = r.solution.claimed_status
    iterations = r.solution.iterations
except LipdslError as err:
    status, iterations = "error: " + err.message[:60], None
hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak": hwm, "variables": size.variables, "lmis": len(size.lmi_orders),
                  "largest": size.largest_lmi,
                  "sum_m2": sum(m * m for m in size.lmi_orders), "model": size.memory(),
                  "seconds": time.perf_counter() - t0, "status": status, "iterations": iterations}))
"""


def write_net(folder: Path, channels: int, kernel: int, length: int = 32) -> Path:
    rng = np.random.default_rng(0)
    name = f"mem_c{channels}_k{kernel}"
    w = rng.normal(size=(channels, channels, kernel)) / np.sqrt(channels * kernel)
    np.savez(folder / f"{name}.npz", conv=w, fc=rng.normal(size=(5, channels)) / np.sqrt(channels))
    spec = folder / f"{name}.lip"
    spec.write_text(
        f'network {name}\ninput {channels} x {length}\nweights "{name}.npz"\n'
        f"conv1d c: {channels} -> {channels}, kernel {kernel}, padding causal, weight conv\nrelu\n"
        f"global_avgpool\ndense fc: {channels} -> 5, weight fc\n"
    )
    return spec


def measure(spec: Path, frequencies: int | None, iterations: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    args = [sys.executable, "-c", CHILD, str(spec), str(frequencies or "none"), str(iterations)]
    proc = subprocess.Popen(args,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    with proc.stdout, proc.stderr:
        out = proc.stdout.read()
        err = proc.stderr.read()
    proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(err.decode()[-2000:])
    row = json.loads(out)
    row["wall"] = time.perf_counter() - t0
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--cases", choices=sorted(CASES), default="small")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "memory.csv"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c, k, f in CASES[args.cases]:
            spec = write_net(Path(tmp), c, k)
            case = f"c{c} k{k}" + (f" --frequencies {f}" if f else "")
            row = {"case": case, **measure(spec, f, args.iterations)}
            row["ratio"] = row["model"] / row["peak"]
            rows.append(row)
            print(f"{row['case']:>24}  n={row['variables']:>6}  LMIs={row['lmis']:>3} "
                  f"(largest {row['largest']:>4})  "
                  f"peak {row['peak'] / 2**20:8.0f} MiB  model {row['model'] / 2**20:8.0f} MiB  "
                  f"model/peak {row['ratio']:5.2f}  {row['seconds']:6.1f} s  {row['status']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_csv(args.out, list(rows[0]), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
