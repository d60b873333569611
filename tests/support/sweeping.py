"""Helpers of the sweep tests: ECG checkpoints (the shipped ones and perturbed copies), a Dask cluster of
separate processes on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from repo_paths import DATA, ROOT

ECG_SPEC = ROOT / "specs" / "ecg.lip"
ECG_DIR = DATA / "ecg"


def ecg_checkpoints(directory: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` ECG weight files in ``directory``: the three shipped trained models, then copies of them with
    every tensor scaled entrywise by ``1 + 0.05 N(0, 1)`` (trained weights, moved a little, as in a run)."""
    real = sorted(ECG_DIR.glob("*.npz"))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        src = real[i % len(real)]
        dst = directory / f"ckpt_{i:02d}.npz"
        if i < len(real):
            shutil.copy(src, dst)
        else:
            with np.load(src) as z:
                np.savez(dst, **{k: z[k] * (1 + 0.05 * rng.standard_normal(z[k].shape)) for k in z.files})
        out.append(dst)
    return out


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _dask_command() -> list[str]:
    """``dask`` as a command (the venv's script beside this Python, else ``python -m dask``)."""
    script = Path(sys.executable).with_name("dask")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dask"]


class DaskCluster:
    """``dask scheduler`` and ``n`` ``dask worker`` processes on 127.0.0.1 (each its own process group),
    started with a scheduler file; every wait is bounded."""

    def __init__(self, directory: Path, n_workers: int = 2, timeout: float = 120.0) -> None:
        self.directory, self.n_workers, self.timeout = directory, n_workers, timeout
        self.file = directory / "scheduler.json"
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.address = ""

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        out = open(self.directory / log, "wb")
        try:
            return subprocess.Popen(_dask_command() + args, stdout=out, stderr=subprocess.STDOUT,
                                    env=_env(), start_new_session=True)
        finally:
            out.close()

    def __enter__(self) -> "DaskCluster":
        import json

        from distributed import Client

        self.scheduler = self._spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                      "--scheduler-file", str(self.file)], "scheduler.log")
        deadline = time.monotonic() + self.timeout
        while not self.file.exists():
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                self.__exit__(None, None, None)
                raise RuntimeError("dask scheduler did not start: "
                                   + (self.directory / "scheduler.log").read_text(errors="replace")[-2000:])
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written in one go, but give it a moment
        self.address = json.loads(self.file.read_text())["address"]
        for i in range(self.n_workers):
            self.workers.append(self._spawn(["worker", self.address, "--nthreads", "1", "--no-dashboard",
                                             "--name", f"w{i}", "--host", "127.0.0.1"], f"worker{i}.log"))
        with Client(self.address, timeout=self.timeout) as client:
            client.wait_for_workers(self.n_workers, timeout=self.timeout)
        return self

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker ``i``'s whole process group (nanny and worker): as a machine that disappears."""
        os.killpg(self.workers[i].pid, signal.SIGKILL)

    def __exit__(self, *exc) -> None:
        for p in self.workers + ([self.scheduler] if self.scheduler else []):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.workers + ([self.scheduler] if self.scheduler else []):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
