"""lipdsl: certified Lipschitz bounds for 1D CNNs described in a small text spec.

The Python API (``lipdsl.network``) is imported on first use, so ``import lipdsl`` stays cheap::

    net = lipdsl.load("specs/ecg.lip")       # or lipdsl.parse(text), lipdsl.from_torch(module, (1, 128)),
    net.solve().lipschitz                    #    lipdsl.from_onnx("model.onnx")
    net.solve(certificate="ecg.cert.json"); lipdsl.verify("specs/ecg.lip", "ecg.cert.json", exact=True)
"""
import sys
import types

__version__ = "0.1.0"

_API = ("load", "parse", "verify", "from_torch", "from_onnx", "Network", "Bound", "LowerBound", "Comparison")
__all__ = list(_API)


class _CallableModule(types.ModuleType):
    """The submodules ``lipdsl.load`` and ``lipdsl.parse``, callable as the API functions of the same name."""

    def __call__(self, *args, **kwargs):
        from . import network

        return getattr(network, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    # NOTE: ``lipdsl.load``, ``lipdsl.parse`` and ``lipdsl.verify`` name both pipeline modules and API
    # functions. Importing a submodule sets it as an attribute of the package, which would hide the
    # function; instead the module is made callable, so ``lipdsl.load("net.lip")``,
    # ``lipdsl.load.load_network`` and ``import lipdsl.parse as p`` all keep working.
    def __setattr__(self, name, value):
        if name in ("load", "parse", "verify") and isinstance(value, types.ModuleType):
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name in ("load", "parse", "verify"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name in _API:
        from . import network

        return getattr(network, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
