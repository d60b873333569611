"""Test session set-up: single-threaded BLAS, as the CLI uses (the LMIs are small; threads only contend)."""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
