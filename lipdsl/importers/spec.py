"""The imported spec: Imported (layers + named tensors) -> .lip text and .npz, or the checked typed.Network.

What both readers (``importer.import_onnx``, ``pytorch``) produce and share: the :class:`Layer` records and
:class:`Imported`, which writes a readable ``.lip`` spec plus an ``.npz`` of its tensors (``Imported.write``)
or builds the checked ``typed.Network`` directly (``Imported.to_network``), without files; the spec's names
(tensor keys, layer and network names, as ``check`` gives them) and the forms the spec can express (padding,
pooling), refusing the others with ``UnsupportedError``.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lipdsl.errors import LipdslError, UnsupportedError
from lipdsl.lang import typed
from lipdsl.lang.check import conv1d_length, pool_length
from lipdsl.lang.parse import keywords
from lipdsl.lang.typed import Shape
from lipdsl.lang.weights import spelt_key

__all__ = [
    "Layer",
    "Imported",
    "Keys",
    "layer_name",
    "network_name",
    "padding_form",
    "pool_options",
    "staged",
]


# Never layer names: the grammar's keywords and 'x', the input line's times sign (_keyword; the keywords are
# lipdsl.lang.parse.keywords, the one list), and the names with a meaning in expressions or as activations.
_RESERVED = frozenset(
    "pi e sqrt exp log sin cos tan tanh atan abs relu sigmoid softplus hardtanh identity "
    "leaky_relu elu".split()
)


def _keyword(word: str) -> bool:
    return word == "x" or word in keywords()


# -- the result ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One layer line of the spec: ``kind`` as in the language, its options, and where it came from.

    ``options`` per kind: conv1d ``c_in, c_out, kernel, stride, dilation, padding, weight, bias`` (tensor
    keys); dense ``n_in, n_out, weight, bias``; activation ``function, parameter``; avgpool/maxpool
    ``kernel, stride``; batchnorm ``channels, weight, bias, running_mean, running_var`` (tensor keys),
    ``prefix`` (the keys' common ``P`` of ``P.weight``..., or None) and ``eps``.
    """

    kind: str  # conv1d, dense, activation, avgpool, maxpool, global_avgpool, flatten, batchnorm, residual
    name: str | None
    options: dict[str, Any]
    origin: str = ""  # e.g. "node '/0/Conv' (Conv)"


@dataclass
class Imported:
    """A network read from a model: input shape, layers in order, and the named tensors they refer to."""

    name: str
    input_shape: Shape
    layers: list[Layer]
    tensors: dict[str, np.ndarray]
    origin: str  # one line saying what was read, for the spec's header
    notes: list[str] = field(
        default_factory=list
    )  # what the import changed (transposed weights, folded adds)
    outputs: list[str] = field(default_factory=list)  # per layer, the model's tensor it computes (ONNX)

    def spec_text(self, weights_file: str) -> str:
        """The ``.lip`` text, with tensors taken by key from ``weights_file`` (relative to the spec)."""
        from lipdsl import __version__

        lines = [
            f"# Imported by lipdsl {__version__} from {self.origin}.",
            "# Tensor keys are named after the model's parameters (sanitized to the spec's key syntax).",
        ]
        lines += [f"# note: {n}" for n in self.notes]
        shp = self.input_shape
        dims = (
            str(shp.channels) if shp.flat else f"{shp.channels} x {'*' if shp.length is None else shp.length}"
        )
        lines += [f"network {self.name}", f"input {dims}", f'weights "{weights_file}"', ""]
        body = _body_lines(self.layers)
        width = min(max((len(t) for t, _ in body), default=0), 90)
        lines += [f"{t:<{width}}  # {o}" if o else t for t, o in body]
        return "\n".join(lines) + "\n"

    def write(
        self, spec_path: str | os.PathLike, weights_path: str | os.PathLike | None = None
    ) -> tuple[Path, Path]:
        """Write the spec and an ``.npz`` of its tensors (default: beside the spec, same stem).

        Returns
        -------
        (Path, Path)
            The spec and the weights file written.

        Raises
        ------
        LipdslError
            If the weights file would lie outside the spec's directory (the spec could not name it without
            ``--allow-outside``), or a file cannot be written.
        """
        spec_path = Path(spec_path)
        weights = spec_path.with_suffix(".npz") if weights_path is None else Path(weights_path)
        rel = os.path.relpath(weights.resolve(), spec_path.resolve().parent)
        if rel.split(os.sep)[0] == "..":
            raise LipdslError(
                f"weights file {str(weights)!r} is outside the spec's directory",
                hint="write the weights next to the spec or in a folder below it",
            )
        with staged(weights, spec_path) as (tmp_weights, tmp_spec):
            with open(tmp_weights, "wb") as f:
                np.savez(f, **self.tensors)
            tmp_spec.write_text(self.spec_text(rel.replace(os.sep, "/")), encoding="utf-8")
        return spec_path, weights

    def to_network(self) -> typed.Network:
        """The checked network: the spec this import writes (``write``), read back through the front end
        (``lang.load``: parse and ``check``, the one type checker), in a temporary folder. The network is
        the same as the written spec's; its spans point into that spec, which is gone (``source_path`` and
        ``span`` are cleared)."""
        import dataclasses
        import tempfile

        from lipdsl.lang.load import load_network

        with tempfile.TemporaryDirectory(prefix="lipdsl-import-") as folder:
            spec, _ = self.write(Path(folder) / "imported.lip")
            _, net = load_network(spec)
        return dataclasses.replace(net, span=None, source_path=None)


@contextmanager
def staged(*targets: Path) -> Iterator[tuple[Path, ...]]:
    """Write files whole or not at all: yields a new temporary path beside each target (same suffix, so that
    a spec can name it) for the block to write; when the block completes they are moved over the targets in
    order (``os.replace``), and when it raises they are removed, with the folders made for them. A target that
    existed keeps its content until it is replaced, and after a failure.

    Raises
    ------
    LipdslError
        A file cannot be written (named as the target, not as the temporary file).
    """
    temps: list[Path] = []
    made: list[Path] = []  # folders created here, deepest last
    done = False
    try:
        for t in targets:
            for d in reversed((t.parent, *t.parent.parents)):
                if not d.exists():
                    try:
                        d.mkdir()
                    except FileExistsError:  # made meanwhile by someone else
                        continue
                    made.append(d)
            temps.append(t.parent / f".{t.name}.{secrets.token_hex(4)}.part{t.suffix}")
            temps[-1].open("xb").close()  # exclusive: never another process's file
        yield tuple(temps)
        for tmp, t in zip(temps, targets):
            os.replace(tmp, t)
        done = True
    except OSError as exc:
        named = {str(tmp): str(t) for tmp, t in zip(temps, targets)}
        shown = named.get(str(exc.filename), exc.filename or str(targets[0]))
        raise LipdslError(f"cannot write {shown}: {exc.strerror or exc}") from None
    finally:
        for tmp in temps:
            with suppress(OSError):  # (a moved file is gone from here: only a failure leaves one)
                tmp.unlink(missing_ok=True)
        if not done:
            for d in reversed(made):
                with suppress(OSError):  # not empty: something else was put there meanwhile
                    d.rmdir()


def _layer_text(L: Layer) -> str:
    o = L.options
    label = f" {L.name}" if L.name else ""
    sized = f" {L.name}:" if L.name else ""  # a name before sizes takes a colon
    if L.kind == "conv1d":
        parts = [f"conv1d{sized} {o['c_in']} -> {o['c_out']}", f"kernel {o['kernel']}"]
        if o["stride"] != 1:
            parts.append(f"stride {o['stride']}")
        if o["dilation"] != 1:
            parts.append(f"dilation {o['dilation']}")
        if o["padding"] not in (0, "valid"):
            parts.append(f"padding {o['padding']}")
        parts.append(f"weight {o['weight']}")
        if o.get("bias"):
            parts.append(f"bias {o['bias']}")
        return ", ".join(parts)
    if L.kind == "dense":
        text = f"dense{sized} {o['n_in']} -> {o['n_out']}, weight {o['weight']}"
        return text + (f", bias {o['bias']}" if o.get("bias") else "")
    if L.kind == "activation":
        p = o.get("parameter")
        return o["function"] + ("" if p is None else f"({p!r})") + label
    if L.kind in ("avgpool", "maxpool"):
        stride = "" if o["stride"] == o["kernel"] else f", stride {o['stride']}"
        return f"{L.kind}{sized} {o['kernel']}{stride}"
    if L.kind == "batchnorm":
        parts = [f"batchnorm{sized} {o['channels']}"]
        if o.get("prefix"):
            parts.append(f"weights {o['prefix']}")
        else:
            parts += [f"{role} {o[role]}" for role in ("running_mean", "running_var", "weight", "bias")]
        if o["eps"] != 1e-5:  # (the language's default, as PyTorch's)
            parts.append(f"eps {o['eps']!r}")
        return ", ".join(parts)
    return L.kind + label


def _body_lines(layers: list[Layer]) -> list[tuple[str, str]]:
    """(text, origin) per spec line; a block as ``residual NAME:``, its layers, ``shortcut``, ``end``."""
    body: list[tuple[str, str]] = []
    for L in layers:
        if L.kind != "residual":
            body.append((_layer_text(L), L.origin))
            continue
        body.append((f"residual{' ' + L.name + ':' if L.name else ''}", L.origin))
        body += [("  " + _layer_text(M), M.origin) for M in L.options["main"]]
        if L.options["shortcut"]:
            body.append(("shortcut", ""))
            body += [("  " + _layer_text(M), M.origin) for M in L.options["shortcut"]]
        body.append(("end", ""))
    return body


class Keys:
    """Sanitized, unique tensor keys for the model's names, and the tensors stored under them."""

    def __init__(self) -> None:
        self.tensors: dict[str, np.ndarray] = {}
        self.by_name: dict[str, str] = {}

    def add(self, name: str, values: np.ndarray) -> str:
        key = self.by_name.get(name)
        if key is not None and np.array_equal(self.tensors[key], values):
            return key
        base = spelt_key(name)
        key, n = base, 2
        while key in self.tensors:
            key, n = f"{base}_{n}", n + 1
        self.tensors[key] = np.ascontiguousarray(values, dtype=np.float64)
        self.by_name.setdefault(name, key)
        return key


def layer_name(weight_name: str, taken: set[str]) -> str | None:
    """``conv1.weight`` -> ``conv1``, ``features.0.weight`` -> ``features_0``; None if no readable name."""
    folded = re.match(r"(.+)\.weight_", weight_name)  # a weight with batch norm folded in: conv1.weight_bn1
    stem = folded.group(1) if folded else weight_name.rsplit(".", 1)[0] if "." in weight_name else ""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", stem).strip("_")
    if not stem or not re.match(r"[A-Za-z][A-Za-z0-9_]*$", stem) or _keyword(stem) or stem in _RESERVED:
        return None
    if stem in taken:
        return None
    taken.add(stem)
    return stem


def network_name(name: str) -> str:
    text = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "imported"
    if not re.match(r"[A-Za-z_]", text):
        text = "net_" + text
    return text + "_" if _keyword(text) else text


def padding_form(
    pl: int, pr: int, kernel: int, stride: int, dilation: int, length: int | None, where: str
) -> str | int:
    """The spec's padding for zeros ``(pl, pr)``: an int (both sides), ``causal``, ``same``, or refused.

    Right zeros that no output window reads (stride flooring) may be dropped: with the same left padding and
    the same number of outputs, every output reads the same samples.
    """
    reach = dilation * (kernel - 1)
    candidates: list[tuple[str | int, tuple[int, int]]] = [(pl, (pl, pl)), ("causal", (reach, 0))]
    if stride == 1:
        candidates.append(("same", (reach // 2, reach - reach // 2)))
    for form, (cl, cr) in candidates:
        if (cl, cr) == (pl, pr):
            return form
    if length is not None:
        want = conv1d_length(length, kernel, stride, dilation, pl, pr)
        for form, (cl, cr) in candidates:
            if cl == pl and conv1d_length(length, kernel, stride, dilation, cl, cr) == want:
                return form
    raise UnsupportedError(
        f"{where} pads {pl} zeros on the left and {pr} on the right; the spec can express symmetric padding, "
        f"'causal' ({reach}, 0) and 'same' ({reach // 2}, {reach - reach // 2}) only",
        hint="pad symmetrically or causally in the model, or crop with an explicit layer lipdsl supports",
    )


def pool_options(
    kind: str, kernel: int, stride: int, length: int | None, ceil_mode: bool, where: str
) -> dict:
    if ceil_mode:
        floor_n = None if length is None else pool_length(length, kernel, stride)
        ceil_n = None if length is None else (math.ceil((length - kernel) / stride) + 1)
        if length is None or floor_n != ceil_n:
            raise UnsupportedError(
                f"{where} uses ceil_mode, which here takes a partial last window; lipdsl pools in floor mode",
                hint="use ceil_mode=False (or an input length where the windows tile the signal exactly)",
            )
    return {"kernel": kernel, "stride": stride}
