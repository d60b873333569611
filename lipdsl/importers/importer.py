"""Read ONNX: an ONNX model (path, bytes or ModelProto) -> Imported (a .lip spec + tensors, see spec.py).

:func:`import_onnx` reads a 1D CNN from an ONNX graph (package ``onnx``, the optional extra): one chain of
layer nodes, with residual blocks (two branches from one signal joined by an ``Add``), after
``onnx_graph.simplify`` has evaluated constants and folded pads, chomps and batch norm (a batch norm with no
layer to fold into becomes a ``batchnorm`` layer). PyTorch models come in through
:mod:`lipdsl.importers.pytorch`. Anything that has no exact counterpart in the language (concatenation,
grouped convolutions, padding that is neither symmetric, ``same`` nor ``causal``, a batch norm of padded
zeros...) raises ``UnsupportedError`` naming the node and its op: an importer that guessed would give a bound
of some other network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lipdsl.errors import LipdslError, UnsupportedError
from lipdsl.importers.onnx_nodes import _ONNX_SUPPORTED, OnnxNodes, _auto_pad, _bias_layout  # noqa: F401
from lipdsl.importers.spec import Imported, Keys, Layer, network_name
from lipdsl.lang.typed import Shape

__all__ = ["import_onnx", "ImportError_"]


class ImportError_(LipdslError):  # noqa: N801  (not the builtin ImportError)
    """The model file cannot be read, or is not a model of the expected kind."""


def _require_onnx():
    """``onnx`` and its ``numpy_helper``, or the install hint (``onnx_tensors.require_onnx``)."""
    from lipdsl.importers.onnx_tensors import require_onnx

    onnx = require_onnx()
    from onnx import numpy_helper

    return onnx, numpy_helper


def import_onnx(model: Any, *, name: str | None = None, length: int | None = None) -> Imported:
    """Read a sequential 1D CNN from an ONNX model: path or ``onnx.ModelProto`` -> Imported.

    The graph must be one chain: each node takes the previous node's output (plus constants) and the last one
    gives the only graph output. Weights must be initializers or ``Constant`` nodes.

    Parameters
    ----------
    model : str, PathLike, bytes or onnx.ModelProto
        The ``.onnx`` file (external data read from its folder: ``onnx_file.load_model``), its bytes, or a
        loaded model (both self-contained: external data is refused).
    name : str, optional
        The network's name (default: the file's stem, else the graph's name).
    length : int, optional
        Input length when the graph's time axis is symbolic; without it such a model becomes ``input C x *``
        (fine for fully convolutional nets and global average pooling).

    Returns
    -------
    Imported

    Raises
    ------
    UnsupportedError
        A node whose op (or attributes) the language cannot express, naming the node and its op.
    LipdslError
        An unreadable file, or a graph that is not a single chain with one input and one output.
    """
    from lipdsl.importers.onnx_check import check_against_reference
    from lipdsl.importers.onnx_file import load_model
    from lipdsl.importers.onnx_graph import simplify

    onnx, numpy_helper = _require_onnx()
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        proto = load_model(path)  # size, file type, external data and tensor checks before allocating
        stem = path.stem
    elif isinstance(model, (bytes, bytearray)):
        try:
            proto = onnx.load_model_from_string(bytes(model))
        except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types for bad bytes
            raise ImportError_(f"cannot read {name or 'the model'!r} as an ONNX model: {exc}",
                               hint="is it an .onnx file (e.g. from torch.onnx.export)?") from None
        stem = None
    else:
        proto, stem = model, None
    graph = proto.graph
    producer = f"{proto.producer_name} {proto.producer_version}".strip()
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    origin = (
        f"ONNX {stem + '.onnx' if stem else 'model'}"
        + (f" (producer {producer}" if producer else " (")
        + f"{', ' if producer else ''}opset {opset})"
    )
    simple = simplify(proto, length)  # constants evaluated; pads, chomps and batch norm folded (exactly)
    imported = _OnnxReader(simple.model.graph, numpy_helper, onnx, opset).read(
        name or network_name(stem or graph.name or "imported"), length, origin
    )
    imported.notes[:0] = simple.notes
    check_against_reference(proto, imported)  # the original model vs the import, layer by layer
    return imported


class _OnnxReader(OnnxNodes):
    """Walks a topologically sorted ONNX graph, keeping the current tensor's shape (batch axis dropped)."""

    def __init__(self, graph, numpy_helper, onnx, opset: int) -> None:
        self.graph, self.nh, self.onnx, self.opset = graph, numpy_helper, onnx, opset
        self.consts: dict[str, tuple[np.ndarray, str]] = {
            t.name: (self.nh.to_array(t), t.name) for t in graph.initializer
        }
        self.keys = Keys()
        self.layers: list[Layer] = []
        self.taken: set[str] = set()
        self.notes: list[str] = []
        self.outputs: dict[int, str] = {}

    def attrs(self, node) -> dict[str, Any]:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def const(self, node, index: int, what: str) -> np.ndarray:
        if index >= len(node.input) or node.input[index] not in self.consts:
            raise UnsupportedError(
                f"{self.where(node)}: its {what} is not a constant (initializer)",
                hint="export with constant folding (torch.onnx.export(..., do_constant_folding=True))",
            )
        return self.consts[node.input[index]][0]

    @staticmethod
    def where(node) -> str:
        return f"node {node.name or node.output[0]!r} ({node.op_type})"

    def read(self, name: str, length: int | None, origin: str) -> Imported:
        graph = self.graph
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ImportError_(
                f"the graph has {len(inputs)} data inputs ({', '.join(i.name for i in inputs)}); "
                "lipdsl imports networks with one input"
            )
        if len(graph.output) != 1:
            raise UnsupportedError(
                f"the graph has {len(graph.output)} outputs; lipdsl bounds a network with one output",
                hint="export only the output to bound (e.g. the logits)",
            )
        shape, self.squeeze = self.input_shape(inputs[0], length), False
        start = shape
        data_nodes = []
        for node in graph.node:  # constants first (topological order: they depend on constants only)
            if node.op_type == "Constant":
                attrs = self.attrs(node)
                if "value" not in attrs:
                    raise UnsupportedError(f"{self.where(node)}: only 'value' constants are supported")
                self.consts[node.output[0]] = (self.nh.to_array(attrs["value"]), node.output[0])
            else:  # (constant subgraphs were evaluated by onnx_graph.simplify, in float64, before this)
                data_nodes.append(node)
        self.consumers: dict[str, list] = {}
        for node in data_nodes:
            for i in dict.fromkeys(node.input):
                if i and i not in self.consts:
                    self.consumers.setdefault(i, []).append(node)
        self.graph_outputs = {o.name for o in graph.output}
        current, shape, join = self.walk(inputs[0].name, shape, None, top=True)
        if current != graph.output[0].name:
            raise UnsupportedError(
                f"the graph's output {graph.output[0].name!r} is not the end of the chain ({current!r})"
            )
        if not self.layers:
            raise UnsupportedError("the graph has no layer lipdsl can bound")
        outputs = [self.outputs[i] for i in range(len(self.layers))]
        return Imported(name, start, self.layers, self.keys.tensors, origin, self.notes, outputs)

    def data_inputs(self, node) -> list[str]:
        return [i for i in node.input if i and i not in self.consts]

    def walk(self, current: str, shape: Shape, first, *, top: bool) -> tuple[str, Shape, Any]:
        """Follow the chain from tensor ``current`` (first node ``first`` when given), appending layers.

        At the top level a tensor that feeds two nodes opens a residual block (:meth:`residual`); inside a
        branch the walk stops before the node that joins two tensors and returns it. Returns the last
        tensor, its shape and the joining node (None at the top level).
        """
        pending_pad: tuple[int, int] | None = None
        while True:
            if first is not None:
                node, first = first, None
            else:
                users = self.consumers.get(current, [])
                if not users:
                    break
                if len(users) > 1:
                    if not top:
                        raise UnsupportedError(
                            f"the output {current!r} feeds {len(users)} nodes "
                            f"({', '.join(self.where(n) for n in users)}) inside a residual branch",
                            hint="lipdsl imports residual blocks that do not nest",
                        )
                    if pending_pad is not None:
                        raise UnsupportedError("a Pad feeds a residual block; lipdsl folds a Pad into a Conv")
                    current, shape = self.residual(current, shape, users)
                    continue
                node = users[0]
            data = self.data_inputs(node)
            if len(data) > 1 or (data and data[0] != current):
                if not top and node.op_type == "Add":
                    if pending_pad is not None:
                        raise UnsupportedError(f"{self.where(node)} follows a Pad")
                    return current, shape, node
                if len(data) > 1:
                    raise UnsupportedError(
                        f"{self.where(node)} combines {len(data)} tensors ({', '.join(map(repr, data))}): "
                        "lipdsl imports residual Add of two branches from one tensor only; other "
                        "branches and concatenation are not supported",
                        hint="lipdsl bounds sequential 1D CNNs and residual blocks",
                    )
                raise UnsupportedError(
                    f"{self.where(node)} reads {data[0]!r}, not the output of the previous "
                    "layer: the graph is not a single chain"
                )
            if pending_pad is not None and node.op_type == "BatchNormalization":
                raise UnsupportedError(
                    f"{self.where(node)} normalises the zeros of the Pad before it (they become its shift "
                    "beta - mean * scale), which a spec cannot express: lipdsl pads in convolutions only, "
                    "after the batch norm",
                    hint="pad after the batch norm (Conv1d(padding=...)), or fold the batch norm into the "
                    "layer before the Pad (torch.nn.utils.fusion.fuse_conv_bn_eval)",
                )
            if pending_pad is not None and node.op_type != "Conv":
                raise UnsupportedError(
                    f"{self.where(node)} follows a Pad; lipdsl folds zero padding into the next Conv only"
                )
            if node.op_type == "Pad":
                pending_pad = self.pad(node, shape)
            else:
                shape = self.node(node, shape, pending_pad)
                pending_pad = None
                if self.layers:  # the tensor the last layer's output equals (Identity & co. pass it on)
                    self.outputs[len(self.layers) - 1] = node.output[0]
            current = node.output[0]
            for extra in node.output[1:]:
                if extra and self.consumers.get(extra) or extra in self.graph_outputs:
                    raise UnsupportedError(
                        f"{self.where(node)}: its output {extra!r} is used; only the first output can be"
                    )
            if not top and current in self.graph_outputs:
                break
        if pending_pad is not None:
            raise UnsupportedError("the graph ends with a Pad")
        if not top:
            raise UnsupportedError(
                f"a branch from the residual block's input ends at {current!r} without joining the other",
                hint="lipdsl imports residual blocks main(x) + shortcut(x) joined by an Add",
            )
        return current, shape, None

    def residual(self, x: str, shape: Shape, users) -> tuple[str, Shape]:
        """``x`` feeds two nodes: two branches joined by one ``Add`` -> a ``residual`` layer."""
        where_all = ", ".join(self.where(n) for n in users)
        if len(users) != 2 or self.squeeze or shape.flat:
            raise UnsupportedError(
                f"the output {x!r} feeds {len(users)} nodes ({where_all}): the graph branches"
                + ("" if len(users) != 2 else " on a vector; lipdsl's residual blocks take signals"),
                hint="lipdsl imports residual blocks (two branches from one signal, summed by an Add)",
            )
        saved_layers, saved_outputs = self.layers, self.outputs
        branches = []
        for user in users:
            self.layers, self.outputs = [], {}
            if user.op_type == "Add" and x in self.data_inputs(user) and len(self.data_inputs(user)) == 2:
                end, out_shape, join = x, shape, user  # the identity shortcut
            else:
                end, out_shape, join = self.walk(x, shape, user, top=False)
            branches.append((self.layers, self.outputs, end, out_shape, join))
        self.layers, self.outputs = saved_layers, saved_outputs
        (la, oa, ea, sa, ja), (lb, ob, eb, sb, jb) = branches
        if ja is not jb or sorted(self.data_inputs(ja)) != sorted([ea, eb]):
            raise UnsupportedError(
                f"the output {x!r} feeds two branches that end in different nodes "
                f"({self.where(ja)}, {self.where(jb)}): not a residual block",
                hint="lipdsl imports residual blocks main(x) + shortcut(x) joined by one Add",
            )
        add = ja
        if len(add.input) != 2 or sa != sb:
            raise UnsupportedError(
                f"{self.where(add)} adds {sa} and {sb}: the branches of a residual block must have one shape"
            )
        for branch in (la, lb):
            bad = [L for L in branch
                   if L.kind not in ("conv1d", "activation", "avgpool", "maxpool", "batchnorm")]
            if bad:
                raise UnsupportedError(
                    f"the residual branch ending at {self.where(add)} holds a {bad[0].kind} "
                    f"({bad[0].origin}); lipdsl's residual blocks hold convolutions, pooling, batch norm "
                    "and activations",
                )
        # the main path: the branch with activations, else the longer one; the other is the shortcut
        def rank(layers):
            return (any(L.kind == "activation" for L in layers), len(layers))

        (main, om), (short, os_) = ((la, oa), (lb, ob)) if rank(la) >= rank(lb) else ((lb, ob), (la, oa))
        if not main:
            raise UnsupportedError(f"{self.where(add)} adds a tensor to itself; not a residual block")
        origin = f"node {add.name!r} (Add)" if add.name else "Add"
        inner = {  # the ONNX tensor each branch layer's output equals, for the reference check
            "main": [om[i] for i in range(len(main))],
            "shortcut": [os_[i] for i in range(len(short))],
        }
        self.layers.append(
            Layer("residual", None, {"main": tuple(main), "shortcut": tuple(short), "outputs": inner}, origin)
        )
        self.outputs[len(self.layers) - 1] = add.output[0]
        return add.output[0], sa


    def input_shape(self, value_info, length: int | None) -> Shape:
        ttype = value_info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        if ttype.elem_type not in (1, 10, 11, 16):  # float, float16, double, bfloat16
            raise ImportError_(f"the input {value_info.name!r} is not a floating-point tensor")
        if len(dims) == 3:
            if dims[1] is None:
                raise ImportError_(
                    f"the input {value_info.name!r} has a symbolic channel count",
                    hint="export with a fixed number of channels",
                )
            n = dims[2] if dims[2] is not None else length
            if length is not None and dims[2] is not None and dims[2] != length:
                raise ImportError_(
                    f"the input {value_info.name!r} has length {dims[2]}, got --length {length}"
                )
            return Shape(dims[1], n)
        if len(dims) == 2 and dims[1] is not None:
            return Shape(dims[1], flat=True)
        raise ImportError_(
            f"the input {value_info.name!r} has shape {['?' if d is None else d for d in dims]}; "
            "expected (batch, channels, length) or (batch, features)"
        )
