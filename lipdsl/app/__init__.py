"""The application: CLI, rendering, plots, sweeps, the Python API facade (the rooms that print)."""
