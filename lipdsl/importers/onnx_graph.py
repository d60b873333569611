"""Normalise ONNX graphs: onnx.ModelProto -> a chain of layer nodes (and check an import against the model).

What exporters write around the layers of a 1D CNN is rewritten here, exactly, before
``importer._OnnxReader`` reads the chain; what cannot be rewritten exactly is refused, naming the node:

- **Constants.** ``Constant`` nodes in every attribute form (``value``, ``value_float(s)``, ``value_int(s)``,
  ``value_string(s)``; ``sparse_value`` is refused) and every node whose inputs are all constants (torch's
  shape arithmetic, the weight-norm subgraph ``w = g * v / ||v||`` of ``ReduceL2``/``Div``/``Mul``, the dynamo
  exporter's ``Cast``/``Reshape`` of parameters) are evaluated with ``onnx.reference`` **in float64**
  (floating inputs are widened first and float casts keep float64), after an output-size estimate.
- **Zero ``Pad`` before a ``Conv``** (dynamo's ``'same'`` with an even kernel) is merged into the conv's pads,
  and ``auto_pad`` ``SAME_UPPER``/``SAME_LOWER`` is resolved on the padded length:
  ``total = max(0, (ceil(N'/s) - 1) s + d (k - 1) + 1 - N')`` with ``N' = N + pad_left + pad_right``.
- **Chomps** (``Slice`` of the time axis right after a ``Conv``, Bai et al.'s ``Chomp1d``): dropping ``a``
  outputs at the start and ``b`` at the end of a stride-``s`` conv is the conv with pads
  ``(p_l - s a, p_r - s b)`` (both must stay >= 0; for ``s > 1`` the output count is checked): ``Conv(pads=
  ((k-1)d, (k-1)d))`` + chomp ``(k-1)d`` is the causal conv ``((k-1)d, 0)``.
- **Batch normalisation** in inference form, ``y = s (x - mean) + beta`` with ``s = gamma / sqrt(var + eps)``,
  is folded into the ``Conv`` or ``Gemm`` before it (``W' = diag(s) W``, ``b' = s (b - mean) + beta``), or
  into the one after it (``W' = W diag(s)``, ``b' = b + W t`` with ``t = beta - s mean``; for a conv only
  without zero padding, since the padded zeros are not normalised). Anything else is refused with a hint.
- ``Dropout`` in training mode is refused (it is random, not the identity).

Guards, before anything is allocated: the file size, external data (refused), every tensor's ``dims``
against its stored data and against :data:`MAX_TENSOR_VALUES`, and the output size of each constant node.

:func:`check_against_reference` runs the original model with ``onnx.reference.ReferenceEvaluator`` and the
imported network with lipdsl's forward pass on random inputs, and refuses the import at the first layer whose
output differs (naming the ONNX tensor and node).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lipdsl.errors import LipdslError, UnsupportedError

__all__ = ["MAX_FILE_BYTES", "MAX_TENSOR_VALUES", "load_model", "simplify", "check_against_reference"]

#: Largest ``.onnx`` file read (a 1D CNN that lipdsl can bound is far smaller).
MAX_FILE_BYTES = 512 * 2**20
#: Largest tensor (initializer, constant or evaluated constant), in values: 2**26 float64 values = 512 MiB.
MAX_TENSOR_VALUES = 2**26
#: Largest input (batch x channels x samples) the reference check evaluates.
MAX_CHECK_VALUES = 2**22

# Ops whose all-constant nodes are random: never evaluated as constants.
_RANDOM = frozenset(
    "RandomNormal RandomUniform RandomNormalLike RandomUniformLike Multinomial Bernoulli".split()
)
# Ops evaluated on constants whose output is no larger than the broadcast of their inputs (or smaller).
_ELEMENTWISE = frozenset(
    "Add Sub Mul Div Pow Max Min Mean Sum Where Equal Less Greater LessOrEqual GreaterOrEqual And Or Xor Not "
    "Neg Abs Sqrt Reciprocal Exp Log Sign Floor Ceil Round Relu Tanh Sigmoid Clip Cast CastLike Identity Mod "
    "Erf IsNaN IsInf".split()
)
_NOT_LARGER = frozenset(
    "Reshape Squeeze Unsqueeze Flatten Transpose Shape Size Gather GatherElements Slice ReduceL2 ReduceL1 "
    "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceSumSquare ArgMax ArgMin Split Dropout "
    "Softmax LogSoftmax CumSum NonZero".split()
)
_FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def require_onnx():
    try:
        import onnx
    except ModuleNotFoundError:
        raise LipdslError(
            "importing ONNX models needs the package 'onnx'", hint="pip install 'lipdsl[onnx]'"
        ) from None
    return onnx


def _where(node) -> str:
    return f"node {node.name or node.output[0]!r} ({node.op_type})"


# -- reading -------------------------------------------------------------------------------------------------


def load_model(path: str | os.PathLike):
    """Read an ``.onnx`` file without external data, after checking its type and size -> ``onnx.ModelProto``.

    Raises
    ------
    LipdslError
        Not a regular file, larger than :data:`MAX_FILE_BYTES`, not an ONNX model, or with tensors
        :func:`check_tensors` refuses.
    """
    onnx = require_onnx()
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise LipdslError(f"model file {str(path)!r} not found") from None
    except OSError as exc:
        raise LipdslError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    import stat as _stat

    if not _stat.S_ISREG(st.st_mode):
        raise LipdslError(f"{str(path)!r} is not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise LipdslError(
            f"{str(path)!r} has {st.st_size:,} bytes; lipdsl reads ONNX files up to {MAX_FILE_BYTES:,} bytes",
            hint="a 1D CNN whose Lipschitz bound lipdsl can compute is far smaller",
        )
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types for a bad file
        raise LipdslError(
            f"cannot read {str(path)!r} as an ONNX model: {exc}",
            hint="is it an .onnx file (e.g. from torch.onnx.export)?",
        ) from None
    check_tensors(proto)
    return proto


def _tensor_values(t) -> tuple[int, int]:
    """(values ``dims`` announce, values the tensor stores): read from the proto, nothing allocated."""
    onnx = require_onnx()
    announced = 1
    for d in t.dims:
        announced *= int(d)
    if t.raw_data:
        try:
            size = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            size = 1
        return announced, len(t.raw_data) // max(size, 1)
    stored = max(
        len(t.float_data),
        len(t.int32_data),
        len(t.string_data),
        len(t.int64_data),
        len(t.double_data),
        len(t.uint64_data),
    )
    if t.data_type in (14, 15):  # complex: two values each
        stored //= 2
    return announced, stored


def check_tensor(t, what: str) -> None:
    """Refuse a TensorProto with external data, negative or huge ``dims``, or fewer stored values than dims
    say."""
    if t.data_location == 1:  # TensorProto.EXTERNAL
        raise UnsupportedError(
            f"{what} keeps its data in an external file; lipdsl reads self-contained ONNX files only",
            hint="save the model with its tensors inside: "
            "onnx.save(model, path, save_as_external_data=False)",
        )
    if any(int(d) < 0 for d in t.dims):
        raise UnsupportedError(f"{what} has negative dims {list(t.dims)}")
    announced, stored = _tensor_values(t)
    if announced > MAX_TENSOR_VALUES:
        raise UnsupportedError(
            f"{what} has dims {list(t.dims)} ({announced:,} values); lipdsl refuses tensors above "
            f"{MAX_TENSOR_VALUES:,} values"
        )
    if stored != announced and not (stored == 0 and announced == 0):
        raise UnsupportedError(
            f"{what} has dims {list(t.dims)} ({announced:,} values) but stores {stored:,}",
            hint="the file is damaged or was not written by an ONNX exporter",
        )


def check_tensors(proto) -> None:
    """Run :func:`check_tensor` on every initializer and every tensor attribute of the main graph."""
    graph = proto.graph
    for t in graph.initializer:
        check_tensor(t, f"initializer {t.name!r}")
    for t in graph.sparse_initializer:
        raise UnsupportedError(f"sparse initializer {t.values.name!r}: sparse tensors are not supported")
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                check_tensor(a.t, f"{_where(node)}, attribute {a.name!r}")
            for t in a.tensors:
                check_tensor(t, f"{_where(node)}, attribute {a.name!r}")
            if a.HasField("sparse_tensor"):
                raise UnsupportedError(
                    f"{_where(node)}: its attribute {a.name!r} is a sparse tensor, "
                    "which lipdsl does not read",
                    hint="export with dense constants",
                )


# -- constants -----------------------------------------------------------------------------------------------


def constant_value(node) -> np.ndarray:
    """The value of a ``Constant`` node, for every attribute form of the ONNX spec (sparse ones refused)."""
    onnx = require_onnx()
    from onnx import numpy_helper

    if len(node.attribute) != 1:
        raise UnsupportedError(f"{_where(node)} has {len(node.attribute)} attributes; a Constant has one")
    a = node.attribute[0]
    value = onnx.helper.get_attribute_value(a)
    if a.name == "value":
        return _widen(numpy_helper.to_array(value))
    if a.name == "value_float":
        return np.array(value, dtype=np.float64)
    if a.name == "value_floats":
        return np.array(list(value), dtype=np.float64)
    if a.name == "value_int":
        return np.array(value, dtype=np.int64)
    if a.name == "value_ints":
        return np.array(list(value), dtype=np.int64)
    if a.name == "value_string":
        return np.array(value.decode() if isinstance(value, bytes) else value, dtype=object)
    if a.name == "value_strings":
        return np.array([v.decode() if isinstance(v, bytes) else v for v in value], dtype=object)
    if a.name == "sparse_value":
        raise UnsupportedError(
            f"{_where(node)} holds a sparse tensor ('sparse_value'), which lipdsl does not read",
            hint="export with dense constants",
        )
    raise UnsupportedError(f"{_where(node)} has the unknown attribute {a.name!r}")


def _widen(a: np.ndarray) -> np.ndarray:
    """Floating arrays as float64 (exact for float16/32/bfloat16); others unchanged."""
    a = np.asarray(a)
    return a.astype(np.float64) if a.dtype.kind == "f" or a.dtype.name == "bfloat16" else a


def _estimate(node, values: list[np.ndarray | None]) -> int | None:
    """An upper bound on the values a constant node outputs (None: unknown, refuse)."""
    op = node.op_type
    shapes = [np.shape(v) for v in values if v is not None]
    biggest = max((int(np.prod(s)) for s in shapes), default=1)
    try:
        if op in _ELEMENTWISE:
            return int(np.prod(np.broadcast_shapes(*shapes))) if shapes else 1
        if op in _NOT_LARGER:
            return biggest
        if op == "Concat":
            return sum(int(np.prod(s)) for s in shapes)
        if op == "ConstantOfShape":
            return (
                int(np.prod([int(v) for v in np.ravel(values[0])])) if values and values[0] is not None else 1
            )
        if op == "Expand":
            return int(np.prod(np.broadcast_shapes(np.shape(values[0]), tuple(int(v) for v in values[1]))))
        if op == "Tile":
            return int(np.prod(np.shape(values[0]))) * int(np.prod([int(v) for v in values[1]]))
        if op == "Range":
            start, limit, delta = (float(np.ravel(v)[0]) for v in values[:3])
            return max(0, math.ceil((limit - start) / delta)) if delta else None
        if op in ("MatMul", "Gemm"):
            a, b = (np.shape(v) for v in values[:2])
            return (int(np.prod(a)) // max(a[-1], 1)) * b[-1] if a and b else biggest
        if op == "Pad":
            return biggest + 2 * sum(abs(int(v)) for v in np.ravel(values[1])) * max(biggest, 1)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    return None


class _Graph:
    """The graph being rewritten: constant values by name, the remaining (data) nodes, and notes."""

    def __init__(self, proto, length: int | None) -> None:
        onnx = require_onnx()
        from onnx import numpy_helper

        self.onnx, self.proto, self.graph = onnx, proto, proto.graph
        self.opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
        self.consts: dict[str, np.ndarray] = {}
        self.order: list[str] = []  # constants in the order they appear (for a stable initializer list)
        self.roots: dict[str, frozenset[str]] = {}  # the initializers each evaluated constant comes from
        for t in self.graph.initializer:
            self.set_const(t.name, _widen(numpy_helper.to_array(t)))
            self.roots[t.name] = frozenset([t.name])
        self.nodes: list[Any] = []
        self.notes: list[str] = []
        self.lengths = self._lengths(length)

    def set_const(self, name: str, value: np.ndarray) -> None:
        if name not in self.consts:
            self.order.append(name)
        self.consts[name] = value

    def attrs(self, node) -> dict[str, Any]:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def _lengths(self, length: int | None) -> dict[str, int]:
        """Time-axis lengths of the tensors shape inference can tell (rank 3, static), by name."""
        proto = self.onnx.ModelProto()
        proto.CopyFrom(self.proto)
        if length is not None:
            for i in proto.graph.input:
                dims = i.type.tensor_type.shape.dim
                if len(dims) == 3 and not dims[2].HasField("dim_value"):
                    dims[2].dim_value = length
        try:
            inferred = self.onnx.shape_inference.infer_shapes(proto, strict_mode=False)
        except Exception:  # noqa: BLE001 - lengths are an aid; without them some rewrites ask for --length
            return {}
        out = {}
        for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if len(dims) == 3 and dims[2].HasField("dim_value"):
                out[vi.name] = int(dims[2].dim_value)
        return out

    # -- constant folding --------------------------------------------------------------------------------

    def fold_constants(self) -> None:
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.set_const(node.output[0], constant_value(node))
                continue
            if node.op_type == "Dropout":
                self.check_dropout(node)
            inputs = [i for i in node.input if i]
            if (
                node.op_type not in _RANDOM
                and all(i in self.consts for i in inputs)
                and node.domain in ("", "ai.onnx")
            ):
                self.evaluate(node)
            else:
                self.nodes.append(node)

    def check_dropout(self, node) -> None:
        """Refuse a Dropout that is active (training mode with a ratio > 0): it is random, not a function."""
        attrs = self.attrs(node)
        training = False
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in self.consts:
                raise UnsupportedError(
                    f"{_where(node)}: its training_mode is an input of the graph, so it may be random",
                    hint="export in eval mode (model.eval())",
                )
            training = bool(np.ravel(self.consts[node.input[2]])[0])
        if int(attrs.get("is_test", 1)) == 0 and self.opset < 7:
            training = True
        ratio = float(attrs.get("ratio", 0.5))
        if len(node.input) > 1 and node.input[1] and node.input[1] in self.consts:
            ratio = float(np.ravel(self.consts[node.input[1]])[0])
        if training and ratio > 0:
            raise UnsupportedError(
                f"{_where(node)} is in training mode (drops values at random with ratio {ratio:g}), not the "
                "identity of inference",
                hint="export in eval mode (model.eval()), or with training_mode=False",
            )

    def evaluate(self, node) -> None:
        from onnx.reference import ReferenceEvaluator

        values = [self.consts[i] if i else None for i in node.input]
        size = _estimate(node, values)
        if size is None or size > MAX_TENSOR_VALUES:
            got = "an output of unknown size" if size is None else f"{size:,} values"
            raise UnsupportedError(
                f"{_where(node)} computes on constants and would give {got}; lipdsl evaluates constant "
                f"subgraphs of shape arithmetic and elementwise ops up to {MAX_TENSOR_VALUES:,} values",
                hint="export with constant folding (torch.onnx.export(..., do_constant_folding=True))",
            )
        feeds = {i: v for i, v in zip(node.input, values) if i}
        run = node
        if node.op_type == "Cast" and values[0] is not None and values[0].dtype == np.float64:
            to = int(self.attrs(node).get("to", 0))
            if to in _FLOAT_TYPES:  # keep float64: the weights are evaluated exactly, not re-rounded
                self.set_const(node.output[0], values[0])
                return
        try:
            results = ReferenceEvaluator(run, opsets={"": self.opset}).run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - the evaluator raises whatever the op raises
            raise UnsupportedError(
                f"{_where(node)} computes on constants, and evaluating it failed: {exc}",
                hint="export with constant folding (do_constant_folding=True)",
            ) from None
        roots = frozenset().union(*(self.roots.get(i, frozenset()) for i in node.input if i))
        for name, value in zip(node.output, results):
            if name:
                self.set_const(name, _widen(np.asarray(value)))
                self.roots[name] = roots

    def display_name(self, name: str) -> str:
        """A tensor's name for the spec: evaluated parameters are named after the parameter they compute.

        torch's weight norm (``weight_norm``: ``X.parametrizations.weight.original0/1``, the older
        ``X.weight_g``/``X.weight_v``) becomes ``X.weight``, PyTorch's name of the effective weight; other
        constants keep their own name.
        """
        roots = self.roots.get(name, frozenset())
        if name in roots or not roots:
            return name
        stems = set()
        for r in roots:
            m = re.fullmatch(r"(.+)\.parametrizations\.(\w+)\.original\d+", r) or re.fullmatch(
                r"(.+)\.(\w+)_[gv]", r
            )
            stems.add(f"{m.group(1)}.{m.group(2)}" if m else None)
        return stems.pop() if len(stems) == 1 and None not in stems else name

    # -- the data path -----------------------------------------------------------------------------------

    def consumers(self, name: str) -> list:
        users = [n for n in self.nodes if name in n.input]
        if name in {o.name for o in self.graph.output}:
            users.append(None)  # a graph output is a consumer too
        return users

    def producer(self, name: str):
        return next((n for n in self.nodes if name in n.output), None)

    def single_user(self, name: str):
        users = self.consumers(name)
        return users[0] if len(users) == 1 else None

    def const_input(self, node, index: int, what: str) -> np.ndarray:
        if index >= len(node.input) or not node.input[index]:
            return None
        if node.input[index] not in self.consts:
            raise UnsupportedError(f"{_where(node)}: its {what} is not a constant")
        return self.consts[node.input[index]]

    def new_const(self, base: str, value: np.ndarray) -> str:
        name, n = base, 2
        while name in self.consts or any(name in nd.output for nd in self.nodes):
            name, n = f"{base}_{n}", n + 1
        self.set_const(name, np.asarray(value, dtype=np.float64))
        return name

    def replace_node(self, old, new) -> None:
        self.nodes[self.nodes.index(old)] = new

    def make_node(self, like, inputs, output, **attrs):
        node = self.onnx.helper.make_node(like.op_type, inputs, [output], name=like.name, **attrs)
        return node

    def conv_attrs(self, node) -> dict[str, Any]:
        return {k: v for k, v in self.attrs(node).items()}

    def resolve_padding(
        self, conv, length: int | None, extra: tuple[int, int] = (0, 0)
    ) -> tuple[int, int] | None:
        """The conv's explicit (left, right) zeros, ``extra`` added, ``auto_pad`` resolved; None if
        unknown."""
        a = self.attrs(conv)
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        W = self.consts.get(conv.input[1]) if len(conv.input) > 1 else None
        k = int(a.get("kernel_shape", [W.shape[-1] if W is not None else 0])[0])
        s = int(a.get("strides", [1])[0])
        d = int(a.get("dilations", [1])[0])
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            reach = d * (k - 1)
            if s == 1:
                total = reach
            elif length is None:
                return None
            else:
                n = length + extra[0] + extra[1]
                total = max(0, (-(-n // s) - 1) * s + reach + 1 - n)
            small, big = total // 2, total - total // 2
            pl, pr = (small, big) if auto == "SAME_UPPER" else (big, small)
        elif auto == "VALID":
            pl, pr = 0, 0
        else:
            pads = [int(p) for p in a.get("pads", [0, 0])]
            if len(pads) != 2:
                return None
            pl, pr = pads
        return pl + extra[0], pr + extra[1]

    def with_pads(self, conv, pads: tuple[int, int], output: str | None = None, inputs=None):
        a = {k: v for k, v in self.attrs(conv).items() if k not in ("pads", "auto_pad")}
        node = self.onnx.helper.make_node(
            "Conv",
            list(inputs or conv.input),
            [output or conv.output[0]],
            name=conv.name,
            pads=list(pads),
            **a,
        )
        return node

    def merge_pads(self) -> None:
        """``Pad`` (zeros, time axis only) whose output feeds one ``Conv`` only -> that conv's pads."""
        for pad in [n for n in self.nodes if n.op_type == "Pad"]:
            conv = self.single_user(pad.output[0])
            if conv is None or conv.op_type != "Conv" or conv.input[0] != pad.output[0]:
                continue
            zeros = _zero_time_pads(self, pad)
            if zeros is None:
                continue  # the reader refuses it, naming the node
            length = self.lengths.get(pad.input[0])
            resolved = self.resolve_padding(conv, length, zeros)
            if resolved is None:
                continue  # the reader refuses, asking for --length
            merged = self.with_pads(conv, resolved, inputs=[pad.input[0]] + list(conv.input[1:]))
            self.replace_node(conv, merged)
            self.nodes.remove(pad)

    def fold_chomps(self) -> None:
        """``Slice`` of the time axis right after a ``Conv`` -> the conv's pads (Bai et al.'s ``Chomp1d``)."""
        for sl in [n for n in self.nodes if n.op_type == "Slice"]:
            conv = self.producer(sl.input[0])
            if conv is None or conv.op_type != "Conv" or self.single_user(conv.output[0]) is not sl:
                continue
            where = _where(sl)
            start, stop = self.slice_time(sl)
            a = self.attrs(conv)
            s = int(a.get("strides", [1])[0])
            n_in = self.lengths.get(conv.input[0])
            pads = self.resolve_padding(conv, n_in)
            if pads is None:
                raise UnsupportedError(
                    f"{where} crops a conv whose padding depends on the input length", hint="pass --length"
                )
            n_out = self.lengths.get(conv.output[0])
            lo, hi = _slice_bounds(start, stop, n_out)
            if lo is None:
                raise UnsupportedError(
                    f"{where} crops the time axis at [{start}:{stop}], which depends on the input length",
                    hint="pass --length (or crop with negative ends, as Chomp1d does)",
                )
            pl, pr = pads[0] - s * lo, pads[1] - s * hi
            if pl < 0 or pr < 0:
                raise UnsupportedError(
                    f"{where} crops more of the output of {_where(conv)} than its zero padding makes "
                    f"({lo} at the start, {hi} at the end); lipdsl folds crops into padding only",
                    hint="crop the input instead, or pad more in the conv",
                )
            if s != 1:
                if n_in is None or n_out is None:
                    raise UnsupportedError(
                        f"{where} crops a strided conv of unknown length", hint="pass --length"
                    )
                W = self.consts[conv.input[1]]
                d = int(a.get("dilations", [1])[0])
                if (n_in + pl + pr - d * (W.shape[-1] - 1) - 1) // s + 1 != n_out - lo - hi:
                    raise UnsupportedError(f"{where} crops a strided conv in a way padding cannot express")
            self.replace_node(conv, self.with_pads(conv, (pl, pr), output=sl.output[0]))
            self.nodes.remove(sl)
            if n_out is not None:
                self.lengths[sl.output[0]] = n_out - lo - hi
            self.notes.append(
                f"{where} crops {lo} + {hi} outputs of {_where(conv)}: folded into its padding ({pl}, {pr})"
            )

    def slice_time(self, sl) -> tuple[int, int]:
        """(start, stop) of a step-1 Slice of the time axis (axis 2 / -1) only; others refused."""
        where = _where(sl)
        if self.opset < 10 or not any(sl.input[1:]):
            a = self.attrs(sl)
            starts, ends = list(a.get("starts", [])), list(a.get("ends", []))
            axes, steps = list(a.get("axes", range(len(starts)))), [1] * len(starts)
        else:
            starts = [int(v) for v in np.ravel(self.const_input(sl, 1, "starts"))]
            ends = [int(v) for v in np.ravel(self.const_input(sl, 2, "ends"))]
            axes_v = self.const_input(sl, 3, "axes")
            steps_v = self.const_input(sl, 4, "steps")
            axes = list(range(len(starts))) if axes_v is None else [int(v) for v in np.ravel(axes_v)]
            steps = [1] * len(starts) if steps_v is None else [int(v) for v in np.ravel(steps_v)]
        time = None
        for ax, st, en, sp in zip(axes, starts, ends, steps):
            full = st == 0 and en >= 2**31 - 1 and sp == 1
            if ax % 3 == 2:
                if sp != 1:
                    raise UnsupportedError(
                        f"{where} slices the time axis with step {sp}; only step 1 is a crop"
                    )
                time = (st, en)
            elif not full:
                raise UnsupportedError(
                    f"{where} slices axis {ax} (batch or channels); lipdsl folds crops of the time axis only"
                )
        if time is None:
            return 0, 2**63 - 1
        return time

    def fold_batchnorms(self) -> None:
        for bn in [n for n in self.nodes if n.op_type == "BatchNormalization"]:
            self.fold_batchnorm(bn)

    def fold_batchnorm(self, bn) -> None:
        where = _where(bn)
        a = self.attrs(bn)
        if int(a.get("training_mode", 0)):
            raise UnsupportedError(
                f"{where} is in training mode (normalises with the batch's statistics)",
                hint="export in eval mode (model.eval())",
            )
        for extra in bn.output[1:]:
            if extra and self.consumers(extra):
                raise UnsupportedError(f"{where}: its running-statistics output {extra!r} is used")
        gamma, beta, mean, var = (
            self.const_input(bn, i, w) for i, w in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance"))
        )
        if any(v is None for v in (gamma, beta, mean, var)):
            raise UnsupportedError(f"{where} lacks scale, bias, mean or variance")
        # ONNX stores epsilon as a float32: take the shortest decimal that rounds to it (the 1e-5 the model
        # was built with, not 9.99999974737875e-06), as the weights are evaluated in float64.
        eps = float(str(np.float32(a.get("epsilon", 1e-5))))
        if np.any(var + eps <= 0):
            raise UnsupportedError(f"{where} has variance + epsilon <= 0")
        s = gamma.reshape(-1) / np.sqrt(var.reshape(-1) + eps)
        t = beta.reshape(-1) - s * mean.reshape(-1)
        stem = bn.input[1].rsplit(".", 1)[0] if bn.input[1].endswith(".weight") else bn.name or "bn"
        prev = self.producer(bn.input[0])
        if prev is not None and prev.op_type in ("Conv", "Gemm") and self.single_user(prev.output[0]) is bn:
            self.fold_after(prev, bn, s, t, stem)
            return
        nxt = self.single_user(bn.output[0])
        if nxt is not None and nxt.op_type in ("Conv", "Gemm") and nxt.input[0] == bn.output[0]:
            self.fold_before(bn, nxt, s, t, stem)
            return
        raise UnsupportedError(
            f"{where} is a batch normalisation with no Conv or Gemm right before it (or right after it, "
            "unpadded) to fold it into",
            hint="lipdsl folds batch norm into the adjacent conv or dense layer; fold it in the model first "
            "(torch.nn.utils.fusion.fuse_conv_bn_eval)",
        )

    def weight_bias(self, node) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) of a Conv ((c_out, c_in, k)) or a Gemm (as (out, in), alpha and beta applied)."""
        W = self.consts.get(node.input[1])
        if W is None:
            raise UnsupportedError(f"{_where(node)}: its weight is not a constant")
        if node.op_type == "Conv":
            if W.ndim != 3:
                raise UnsupportedError(
                    f"{_where(node)} has a weight of shape {W.shape}; lipdsl supports 1-D convs"
                )
            if int(self.attrs(node).get("group", 1)) != 1:
                raise UnsupportedError(f"{_where(node)} is a grouped convolution", hint="group=1 only")
            n_out = W.shape[0]
            b = self.const_input(node, 2, "bias")
            return W, np.zeros(n_out) if b is None else b.reshape(-1)
        a = self.attrs(node)
        if int(a.get("transA", 0)):
            raise UnsupportedError(f"{_where(node)} has transA=1")
        Wm = float(a.get("alpha", 1.0)) * (W if int(a.get("transB", 0)) else W.T)
        n_out = Wm.shape[0]
        C = self.const_input(node, 2, "bias")
        if C is None:
            b = np.zeros(n_out)
        else:
            C = float(a.get("beta", 1.0)) * np.asarray(C, dtype=np.float64)
            if C.size not in (1, n_out) or (C.ndim == 2 and C.shape[0] != 1) or C.ndim > 2:
                raise UnsupportedError(f"{_where(node)}: bias of shape {C.shape} is not a per-output bias")
            b = np.broadcast_to(C.reshape(-1), (n_out,)).copy()
        return Wm, b

    def rebuilt(self, node, W, b, stem: str, inputs0: str, output: str):
        wkey = self.display_name(node.input[1])
        bkey = (
            self.display_name(node.input[2])
            if len(node.input) > 2 and node.input[2]
            else (wkey[: -len(".weight")] + ".bias" if wkey.endswith(".weight") else wkey + "_bias")
        )
        wname = self.new_const(f"{wkey}_{stem}", W)  # conv1.weight_bn1: the layer keeps the name conv1
        bname = self.new_const(f"{bkey}_{stem}", b)
        if node.op_type == "Conv":
            a = {k: v for k, v in self.attrs(node).items()}
            return self.onnx.helper.make_node(
                "Conv", [inputs0, wname, bname], [output], name=node.name, **a
            ), wname
        return self.onnx.helper.make_node(
            "Gemm", [inputs0, wname, bname], [output], name=node.name, transB=1
        ), wname

    def fold_after(self, prev, bn, s, t, stem) -> None:
        W, b = self.weight_bias(prev)
        if s.size != W.shape[0]:
            raise UnsupportedError(
                f"{_where(bn)} normalises {s.size} channels, but {_where(prev)} gives {W.shape[0]}"
            )
        W2 = W * s.reshape((-1,) + (1,) * (W.ndim - 1))
        b2 = s * b + t
        new, wname = self.rebuilt(prev, W2, b2, stem, prev.input[0], bn.output[0])
        self.replace_node(prev, new)
        self.nodes.remove(bn)
        if prev.output[0] in self.lengths:
            self.lengths[bn.output[0]] = self.lengths[prev.output[0]]
        self.notes.append(
            f"{_where(bn)} is folded into {_where(prev)}: {wname} = diag(s) W, s = gamma / sqrt(var + eps)"
        )

    def fold_before(self, bn, nxt, s, t, stem) -> None:
        W, b = self.weight_bias(nxt)
        if nxt.op_type == "Conv":
            pads = self.resolve_padding(nxt, self.lengths.get(nxt.input[0]))
            if pads != (0, 0):
                raise UnsupportedError(
                    f"{_where(bn)} comes before {_where(nxt)}, which pads with zeros: "
                    "the padded zeros are not "
                    "normalised, so folding would change the network at its borders",
                    hint="fold it in the model, or normalise after the conv",
                )
            W2 = W * s[None, :, None]
            b2 = b + np.einsum("oij,i->o", W, t)
        else:
            if s.size != W.shape[1]:
                raise UnsupportedError(
                    f"{_where(bn)} normalises {s.size} features, {_where(nxt)} takes {W.shape[1]}"
                )
            W2 = W * s[None, :]
            b2 = b + W @ t
        new, wname = self.rebuilt(nxt, W2, b2, stem, bn.input[0], nxt.output[0])
        self.replace_node(nxt, new)
        self.nodes.remove(bn)
        self.notes.append(
            f"{_where(bn)} is folded into {_where(nxt)} after it: {wname} = W diag(s), "
            "s = gamma / sqrt(var + eps)"
        )

    def to_model(self):
        """The rewritten graph: data nodes, the constants they use as float64 initializers, same
        input/output."""
        from onnx import numpy_helper

        used = {i for n in self.nodes for i in n.input if i in self.consts}
        rename: dict[str, str] = {}
        taken = set(self.consts) | {o for n in self.nodes for o in n.output}
        for name in sorted(used):
            new = self.display_name(name)
            if new != name and new not in taken:
                rename[name] = new
                taken.add(new)
        nodes = []
        for n in self.nodes:
            if any(i in rename for i in n.input):
                m = self.onnx.NodeProto()
                m.CopyFrom(n)
                m.input[:] = [rename.get(i, i) for i in n.input]
                n = m
            nodes.append(n)
        self.nodes = nodes
        inits = []
        for name in self.order:
            if name in used:
                v = self.consts[name]
                if v.dtype == object:
                    continue
                inits.append(numpy_helper.from_array(np.asarray(v), rename.get(name, name)))
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        graph = self.onnx.helper.make_graph(
            self.nodes, self.graph.name or "g", inputs, list(self.graph.output), inits
        )
        model = self.onnx.helper.make_model(graph, opset_imports=list(self.proto.opset_import))
        model.producer_name, model.producer_version = self.proto.producer_name, self.proto.producer_version
        return model


def _zero_time_pads(g: _Graph, pad) -> tuple[int, int] | None:
    """(left, right) zeros of a Pad that pads the time axis of a signal with zeros only; else None."""
    a = g.attrs(pad)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = a.get("pads")
    if pads is None:
        if len(pad.input) < 2 or pad.input[1] not in g.consts:
            return None
        pads = [int(p) for p in np.ravel(g.consts[pad.input[1]])]
    value = 0.0
    if len(pad.input) > 2 and pad.input[2]:
        if pad.input[2] not in g.consts:
            return None
        value = float(np.ravel(g.consts[pad.input[2]])[0])
    if len(pad.input) > 3 and pad.input[3]:
        if pad.input[3] not in g.consts:
            return None
        axes = [int(v) % 3 for v in np.ravel(g.consts[pad.input[3]])]
        full = [0] * 6
        for j, ax in enumerate(axes):
            full[ax], full[ax + 3] = pads[j], pads[j + len(axes)]
        pads = full
    if mode != "constant" or value != 0.0 or len(pads) != 6 or any(pads[i] for i in (0, 1, 3, 4)):
        return None
    if pads[2] < 0 or pads[5] < 0:
        return None
    return int(pads[2]), int(pads[5])


def _slice_bounds(start: int, stop: int, n: int | None) -> tuple[int | None, int | None]:
    """(outputs dropped at the start, at the end) of ``x[start:stop]`` on an axis of length n (None: any)."""
    big = 2**31 - 1
    if n is not None:
        lo = min(max(start + n if start < 0 else start, 0), n)
        hi_index = min(max(stop + n if stop < 0 else stop, 0), n)
        return lo, n - max(hi_index, lo)
    if start < 0:
        return None, None
    if stop >= big:
        return start, 0
    if stop < 0:
        return start, -stop
    return None, None


@dataclass(frozen=True)
class Simplified:
    """The rewritten model (one chain for the reader) and what the rewriting did."""

    model: Any
    notes: tuple[str, ...]


def simplify(proto, length: int | None = None) -> Simplified:
    """Rewrite an ONNX model into a chain of layer nodes: constants evaluated, pads, chomps and batch
    norm folded.

    Parameters
    ----------
    proto : onnx.ModelProto
        Checked with :func:`check_tensors` first (by :func:`load_model`, or here for in-memory models).
    length : int, optional
        The input length, where the graph's time axis is symbolic (for ``auto_pad`` and crops that need it).

    Returns
    -------
    Simplified

    Raises
    ------
    UnsupportedError
        A node that cannot be rewritten exactly, named with its op.
    """
    check_tensors(proto)
    g = _Graph(proto, length)
    g.fold_constants()
    g.merge_pads()
    g.fold_chomps()
    g.fold_batchnorms()
    return Simplified(g.to_model(), tuple(g.notes))


# -- the reference check -------------------------------------------------------------------------------------


def _test_length(imported, proto_input) -> int | None:
    """The input length to test on: the graph's, or for a symbolic one the shortest of 64, 128, ... that
    fits."""
    from lipdsl.lang.check import conv1d_padding, conv1d_length, pool_length

    shape = imported.input_shape
    if shape.flat or shape.length is not None:
        return shape.length
    for n in (64, 128, 256, 512, 1024, 4096):
        ok, m = True, n
        for L in imported.layers:
            o = L.options
            if L.kind == "residual":  # both branches keep the length alike (checked at the import)
                for M in o["main"]:
                    q = M.options
                    if M.kind == "conv1d":
                        pl, pr = conv1d_padding(q["padding"], q["kernel"], q["dilation"])
                        m = conv1d_length(m, q["kernel"], q["stride"], q["dilation"], pl, pr)
            elif L.kind == "conv1d":
                pl, pr = conv1d_padding(o["padding"], o["kernel"], o["dilation"])
                m = conv1d_length(m, o["kernel"], o["stride"], o["dilation"], pl, pr)
            elif L.kind in ("avgpool", "maxpool"):
                m = pool_length(m, o["kernel"], o["stride"])
            elif L.kind in ("global_avgpool", "flatten"):
                break
            if m < 1:
                ok = False
                break
        if ok:
            return n
    return None


def check_against_reference(proto, imported, *, samples: int = 3, seed: int = 0) -> None:
    """Compare the imported network with the ONNX model on random inputs, layer by layer; refuse on mismatch.

    ``onnx.reference.ReferenceEvaluator`` runs ``proto`` (the model as read, before any rewriting) on
    ``samples`` standard-normal inputs; lipdsl's forward pass (:mod:`lipdsl.forward`) runs the imported
    network on the same inputs. Each layer's output is compared with the ONNX tensor it stands for
    (``imported.outputs``), in the order of the layers, with tolerance ``tol * (1 + max |reference|)``,
    ``tol`` = 1e-4 for a model computing in float32 or lower and 1e-9 for float64.

    Raises
    ------
    UnsupportedError
        At the first layer whose output differs (or has another shape), naming the ONNX tensor and its node;
        or when the input is too large to check (:data:`MAX_CHECK_VALUES`).
    """
    from onnx.reference import ReferenceEvaluator

    from lipdsl.model.forward import linearize

    net = imported.to_network()
    data_inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    vi = data_inputs[0]
    ttype = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
    n = _test_length(imported, vi)
    shape = net.input_shape
    per = shape.channels if shape.flat else shape.channels * (n or 0)
    if n is None and not shape.flat:
        raise UnsupportedError("the imported network has no input length at which every layer has an output")
    if per * samples > MAX_CHECK_VALUES:
        raise UnsupportedError(
            f"the input has {per:,} values; lipdsl checks every import on random inputs and refuses inputs "
            f"above {MAX_CHECK_VALUES // samples:,} values",
        )
    batch = dims[0] if dims and dims[0] else 1
    dtype = {1: np.float32, 11: np.float64, 10: np.float16}.get(ttype.elem_type, np.float32)
    tol = 1e-9 if dtype == np.float64 else 1e-4
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((samples * batch,) + ((shape.channels,) if shape.flat else (shape.channels, n)))
    try:
        session = ReferenceEvaluator(proto)
    except Exception as exc:  # noqa: BLE001 - the evaluator refuses graphs it cannot run, with any type
        raise UnsupportedError(
            f"onnx's reference evaluator cannot run the model to check the import: {exc}"
        ) from None
    ref: dict[str, list[np.ndarray]] = {}
    checks = []  # (index, layer, the layers computing its output, the ONNX tensor): a block's branches first
    for j, (layer, name) in enumerate(zip(imported.layers, imported.outputs)):
        if layer.kind == "residual":
            block, inner = net.layers[j], layer.options["outputs"]
            for branch, typed_branch in (("main", block.main), ("shortcut", block.shortcut)):
                for i, tensor in enumerate(inner[branch]):
                    prefix = net.layers[:j] + typed_branch[: i + 1]
                    checks.append((j, layer.options[branch][i], prefix, tensor))
        checks.append((j, layer, net.layers[: j + 1], name))
    names = list(dict.fromkeys(name for *_, name in checks))
    for i in range(samples):
        x = u[i * batch : (i + 1) * batch].astype(dtype)
        try:
            results = session.run(None, {vi.name: x}, intermediate=True)
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedError(
                f"onnx's reference evaluator failed on the model to check the import: {exc}"
            ) from None
        for name in names:
            if name not in results:
                raise UnsupportedError(
                    f"the ONNX tensor {name!r} was not computed by the reference evaluator"
                )
            ref.setdefault(name, []).append(np.asarray(results[name], dtype=np.float64))
    for j, layer, layers, name in checks:
        prefix = replace(net, layers=tuple(layers))
        mine = linearize(prefix, u.astype(dtype).astype(np.float64), batch=True).output
        theirs = np.concatenate(ref[name], axis=0)
        if mine.size != theirs.size:
            raise UnsupportedError(
                f"the imported layer {j + 1} ({layer.origin}) gives {mine.shape[1:]} values per input, "
                "but the "
                f"ONNX tensor {name!r} has shape {theirs.shape[1:]}: lipdsl would bound another network",
            )
        diff = float(np.max(np.abs(mine.reshape(-1) - theirs.reshape(-1)), initial=0.0))
        scale = float(np.max(np.abs(theirs), initial=0.0))
        if not diff <= tol * (1.0 + scale):
            raise UnsupportedError(
                f"the imported network differs from the ONNX model at the output {name!r} of layer {j + 1} "
                f"({layer.origin}): max |difference| {diff:.3g} on random inputs (values up to {scale:.3g})",
                hint="lipdsl would bound another network; please report this model",
            )
