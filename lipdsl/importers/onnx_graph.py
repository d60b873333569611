"""Normalise ONNX graphs: onnx.ModelProto -> a chain of layer nodes (constants, pads, chomps, batch norm).

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
- **Batch normalisation** (``onnx_batchnorm``) in inference form, ``y = s (x - mean) + beta`` with
  ``s = gamma / sqrt(var + eps)``, is folded into the ``Conv`` or ``Gemm`` before it (``W' = diag(s) W``,
  ``b' = s (b - mean) + beta``), or into the one after it (``W' = W diag(s)``, ``b' = b + W t`` with
  ``t = beta - s mean``; for a conv only without zero padding, since the padded zeros are not normalised).
  Any other is left in the graph: the reader keeps it as a ``batchnorm`` layer.
- **Global average pools** written as ``Unsqueeze -> ReduceMean -> Squeeze`` (the dynamo exporter's
  ``AdaptiveAvgPool1d(1)``; ``onnx_pooling``) become one ``ReduceMean`` over the time axis.
- ``Dropout`` in training mode is refused (it is random, not the identity).

Guards, before anything is allocated: the file size and its external data (``onnx_file``), every tensor's
``dims`` against its stored data and against :data:`MAX_TENSOR_VALUES`, and the output size of each constant
node.

``onnx_check.check_against_reference`` runs the original model with ``onnx.reference.ReferenceEvaluator``
and the imported network with lipdsl's forward pass on random inputs, and refuses the import at the first
layer whose output differs (naming the ONNX tensor and node).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lipdsl.errors import UnsupportedError
from lipdsl.importers.onnx_batchnorm import fold_batchnorms
from lipdsl.importers.onnx_check import check_against_reference
from lipdsl.importers.onnx_file import MAX_FILE_BYTES, load_model  # noqa: F401 (importable from here too)
from lipdsl.importers.onnx_pooling import merge_unsqueezed_means
from lipdsl.importers.onnx_tensors import (  # noqa: F401 (check_tensor, require_onnx: imported from here too)
    FLOAT_TYPES,
    MAX_TENSOR_VALUES,
    RANDOM_OPS,
    check_tensor,
    check_tensors,
    constant_value,
    estimate_size,
    node_label,
    require_onnx,
    widen,
)
from lipdsl.importers.weight_norm import weight_norm_key
from lipdsl.lang.check import conv1d_length

__all__ = ["MAX_FILE_BYTES", "MAX_TENSOR_VALUES", "load_model", "simplify", "check_against_reference"]


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
            self.set_const(t.name, widen(numpy_helper.to_array(t)))
            self.roots[t.name] = frozenset([t.name])
        self.nodes: list[Any] = []
        self.notes: list[str] = []
        self.lengths, self.ranks = self._shapes(length)

    def set_const(self, name: str, value: np.ndarray) -> None:
        if name not in self.consts:
            self.order.append(name)
        self.consts[name] = value

    def attrs(self, node) -> dict[str, Any]:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def _shapes(self, length: int | None) -> tuple[dict[str, int], dict[str, int]]:
        """(time-axis lengths of the tensors shape inference can tell (rank 3, static), ranks of those whose
        rank it can tell), by name."""
        proto = self.onnx.ModelProto()
        proto.CopyFrom(self.proto)
        if length is not None:
            for i in proto.graph.input:
                dims = i.type.tensor_type.shape.dim
                if len(dims) == 3 and not dims[2].HasField("dim_value"):
                    dims[2].dim_value = length
        try:
            inferred = self.onnx.shape_inference.infer_shapes(proto, strict_mode=False)
        except Exception:  # noqa: BLE001 - shapes are an aid; without them some rewrites ask for --length
            return {}, {}
        lengths, ranks = {}, {}
        for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
            ttype = vi.type.tensor_type
            if not ttype.HasField("shape"):
                continue
            ranks[vi.name] = len(ttype.shape.dim)
            if len(ttype.shape.dim) == 3 and ttype.shape.dim[2].HasField("dim_value"):
                lengths[vi.name] = int(ttype.shape.dim[2].dim_value)
        return lengths, ranks

    # -- constant folding --------------------------------------------------------------------------------

    def fold_constants(self) -> None:
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.set_const(node.output[0], constant_value(node))
                continue
            if node.op_type == "Dropout":
                self.check_dropout(node)
            if (node.op_type == "CastLike" and node.input[0] in self.consts
                    and self.consts[node.input[0]].dtype.kind == "f"):
                # a float constant cast to the data path's float type (the dynamo exporter's zero bias of a
                # bias-free conv): its value, kept in float64 as every weight is
                self.set_const(node.output[0], self.consts[node.input[0]])
                self.roots[node.output[0]] = self.roots.get(node.input[0], frozenset())
                continue
            inputs = [i for i in node.input if i]
            if (
                node.op_type not in RANDOM_OPS
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
                    f"{node_label(node)}: its training_mode is an input of the graph, so it may be random",
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
                f"{node_label(node)} is in training mode (drops values at random with ratio {ratio:g}), "
                "not the identity of inference",
                hint="export in eval mode (model.eval()), or with training_mode=False",
            )

    def evaluate(self, node) -> None:
        from onnx.reference import ReferenceEvaluator

        values = [self.consts[i] if i else None for i in node.input]
        size = estimate_size(node, values)
        if size is None or size > MAX_TENSOR_VALUES:
            got = "an output of unknown size" if size is None else f"{size:,} values"
            raise UnsupportedError(
                f"{node_label(node)} computes on constants and would give {got}; lipdsl evaluates constant "
                f"subgraphs of shape arithmetic and elementwise ops up to {MAX_TENSOR_VALUES:,} values",
                hint="export with constant folding (torch.onnx.export(..., do_constant_folding=True))",
            )
        feeds = {i: v for i, v in zip(node.input, values) if i}
        run = node
        if node.op_type == "Cast" and values[0] is not None and values[0].dtype == np.float64:
            to = int(self.attrs(node).get("to", 0))
            if to in FLOAT_TYPES:  # keep float64: the weights are evaluated exactly, not re-rounded
                self.set_const(node.output[0], values[0])
                return
        try:
            results = ReferenceEvaluator(run, opsets={"": self.opset}).run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - the evaluator raises whatever the op raises
            raise UnsupportedError(
                f"{node_label(node)} computes on constants, and evaluating it failed: {exc}",
                hint="export with constant folding (do_constant_folding=True)",
            ) from None
        roots = frozenset().union(*(self.roots.get(i, frozenset()) for i in node.input if i))
        for name, value in zip(node.output, results):
            if name:
                self.set_const(name, widen(np.asarray(value)))
                self.roots[name] = roots

    def display_name(self, name: str) -> str:
        """A tensor's name for the spec: evaluated parameters are named after the parameter they compute.

        torch's weight norm (``weight_norm``: ``X.parametrizations.weight.original0/1``, the older
        ``X.weight_g``/``X.weight_v``; ``weight_norm.weight_norm_key``) becomes ``X.weight``, PyTorch's name
        of the effective weight; other constants keep their own name.
        """
        roots = self.roots.get(name, frozenset())
        if name in roots or not roots:
            return name
        stems = set()
        for r in roots:
            found = weight_norm_key(r)
            stems.add(found[0] if found else None)
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
            raise UnsupportedError(f"{node_label(node)}: its {what} is not a constant")
        return self.consts[node.input[index]]

    def new_const(self, base: str, value: np.ndarray, dtype=np.float64) -> str:
        name, n = base, 2
        while name in self.consts or any(name in nd.output for nd in self.nodes):
            name, n = f"{base}_{n}", n + 1
        self.set_const(name, np.asarray(value, dtype=dtype))
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
            where = node_label(sl)
            start, stop = self.slice_time(sl)
            a = self.attrs(conv)
            s = int(a.get("strides", [1])[0])
            n_in = self.time_length(conv.input[0])
            pads = self.resolve_padding(conv, n_in)
            if pads is None:
                raise UnsupportedError(
                    f"{where} crops a conv whose padding depends on the input length", hint="pass --length"
                )
            n_out = self.time_length(conv.output[0])
            lo, hi = _slice_bounds(start, stop, n_out)
            if lo is None:
                raise UnsupportedError(
                    f"{where} crops the time axis at [{start}:{stop}], which depends on the input length",
                    hint="pass --length (or crop with negative ends, as Chomp1d does)",
                )
            pl, pr = pads[0] - s * lo, pads[1] - s * hi
            if pl < 0 or pr < 0:
                raise UnsupportedError(
                    f"{where} crops more of the output of {node_label(conv)} than its zero padding makes "
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
                f"{where} crops {lo} + {hi} outputs of {node_label(conv)}: "
                f"folded into its padding ({pl}, {pr})"
            )

    #: Ops whose output has the time length of their first input (elementwise on the signal).
    SAME_LENGTH_OPS = frozenset(("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Elu", "Identity", "Dropout",
                                 "BatchNormalization", "Add", "Mul", "Sub", "Div", "Cast", "CastLike"))

    def time_length(self, name: str) -> int | None:
        """The time-axis length of tensor ``name``: shape inference's (``lengths``), else followed back
        through elementwise ops and convs (``check.conv1d_length``, PyTorch's formula) to a length
        known, e.g. a chomp folded before it (shape inference cannot see through a slice end computed from
        ``x.shape``); None when unknown."""
        seen = set()
        while name not in self.lengths and name not in seen:
            seen.add(name)
            node = self.producer(name)
            if node is None:
                return None
            if node.op_type in self.SAME_LENGTH_OPS:
                name = node.input[0]
                continue
            if node.op_type == "Conv":
                n_in = self.time_length(node.input[0])
                pads = self.resolve_padding(node, n_in)
                W = self.consts.get(node.input[1]) if len(node.input) > 1 else None
                if n_in is None or pads is None or W is None:
                    return None
                a = self.attrs(node)
                s, d = int(a.get("strides", [1])[0]), int(a.get("dilations", [1])[0])
                out = conv1d_length(n_in, W.shape[-1], s, d, *pads)
                return out if out > 0 else None
            return None
        return self.lengths.get(name)

    def slice_time(self, sl) -> tuple[int, int]:
        """(start, stop) of a step-1 Slice of the time axis (axis 2 / -1) only; others refused."""
        where = node_label(sl)
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
    merge_unsqueezed_means(g)
    fold_batchnorms(g)
    return Simplified(g.to_model(), tuple(g.notes))


# -- the reference check -------------------------------------------------------------------------------------


