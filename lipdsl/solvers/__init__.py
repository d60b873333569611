"""Solvers: Sdp -> Solution (what a solver claims), one module per backend."""
