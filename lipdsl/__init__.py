"""lipdsl: certified Lipschitz bounds for 1D CNNs described in a small text spec."""

__version__ = "0.1.0"
