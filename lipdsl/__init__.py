"""lipdsl: certified Lipschitz bounds for 1D CNNs described in a small text spec.

The Python API (``lipdsl.app.api``, ``lipdsl.app.sweep``) is imported on first use, so ``import lipdsl`` stays
cheap and has no side effects::

    net = lipdsl.load("specs/ecg.lip")       # or lipdsl.parse(text), lipdsl.from_torch(module, (1, 128)),
    net.solve().lipschitz                    #    lipdsl.from_onnx("model.onnx")
    net.solve(certificate="ecg.cert.json"); lipdsl.verify("specs/ecg.lip", "ecg.cert.json", exact=True)
    lipdsl.sweep(["a.npz", "b.npz"], like="arch.lip").bounds    # many checkpoints
"""

__version__ = "0.1.0"

#: The public API: name -> the module that defines it (imported on first use).
_API = {
    name: "lipdsl.app.api"
    for name in ("load", "parse", "verify", "from_torch", "from_onnx", "Network", "Bound", "LowerBound",
                 "Comparison")
} | {"sweep": "lipdsl.app.sweep"}
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
