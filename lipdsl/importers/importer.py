"""Read ONNX: an ONNX model (path, bytes or ModelProto) -> Imported (a .lip spec + tensors, see spec.py).

:func:`import_onnx` reads a 1D CNN from an ONNX graph (package ``onnx``, the optional extra): one chain of
layer nodes, with residual blocks (two branches from one signal joined by an ``Add``), after
``onnx_graph.simplify`` has evaluated constants and folded pads, chomps and batch norm. PyTorch models come
in through :mod:`lipdsl.importers.pytorch`. Anything that has no exact counterpart in the language (batch
normalisation not folded, concatenation, grouped convolutions, padding that is neither symmetric, ``same``
nor ``causal``...) raises ``UnsupportedError`` naming the node and its op: an importer that guessed would
give a bound of some other network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lipdsl.errors import LipdslError, UnsupportedError
from lipdsl.importers.spec import Imported, Keys, Layer, layer_name, network_name, padding_form, pool_options
from lipdsl.lang.check import conv1d_length, conv1d_padding, pool_length
from lipdsl.lang.typed import Shape

__all__ = ["import_onnx", "ImportError_"]


_ONNX_SUPPORTED = (
    "Conv (1-D), Relu, Tanh, Sigmoid, LeakyRelu, Elu, AveragePool, MaxPool, GlobalAveragePool, "
    "ReduceMean over time, Flatten, Reshape (as a flatten), Squeeze (after a global pool), "
    "Gemm, MatMul + Add, Pad (zeros, before a Conv), Identity, Dropout, "
    "Add of two branches from one signal (a residual block)"
)


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
        The ``.onnx`` file, its bytes, or a loaded model.
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
    from lipdsl.importers.onnx_graph import load_model, simplify

    onnx, numpy_helper = _require_onnx()
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        proto = load_model(path)  # size, file type and tensor checks before anything is allocated
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


class _OnnxReader:
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
            bad = [L for L in branch if L.kind not in ("conv1d", "activation")]
            if bad:
                raise UnsupportedError(
                    f"the residual branch ending at {self.where(add)} holds a {bad[0].kind} "
                    f"({bad[0].origin}); lipdsl's residual blocks hold convolutions and activations",
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

    def pad(self, node, shape: Shape) -> tuple[int, int]:
        attrs = self.attrs(node)
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = attrs.get("pads")
        if pads is None:
            pads = [int(p) for p in self.const(node, 1, "pads")]
        value = 0.0
        if len(node.input) > 2 and node.input[2]:
            value = float(np.asarray(self.const(node, 2, "constant value")).reshape(-1)[0])
        if len(node.input) > 3 and node.input[3]:
            raise UnsupportedError(f"{self.where(node)}: pads with 'axes' are not supported")
        if (
            mode != "constant"
            or value != 0.0
            or shape.flat
            or len(pads) != 6
            or any(pads[i] for i in (0, 1, 3, 4))
        ):
            raise UnsupportedError(
                f"{self.where(node)}: only zero padding of the time axis is supported "
                f"(got mode {mode!r}, value {value:g}, pads {list(pads)})"
            )
        return int(pads[2]), int(pads[5])

    def node(self, node, shape: Shape, pad: tuple[int, int] | None) -> Shape:
        op, attrs, where = node.op_type, self.attrs(node), self.where(node)
        origin = f"node {node.name!r} ({op})" if node.name else op
        if op in ("Identity",):
            return shape
        if op == "Dropout":
            self.notes.append(f"{where} is dropped (inference: the identity)")
            return shape
        if op in ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Elu"):
            fn = {
                "Relu": "relu",
                "Tanh": "tanh",
                "Sigmoid": "sigmoid",
                "LeakyRelu": "leaky_relu",
                "Elu": "elu",
            }[op]
            parameter = None
            if op == "LeakyRelu":
                parameter = float(attrs.get("alpha", 0.01))
            elif op == "Elu":
                parameter = float(attrs.get("alpha", 1.0))
                if parameter < 0:
                    raise UnsupportedError(
                        f"{where} has alpha {parameter:g} < 0", hint="lipdsl's elu needs alpha >= 0"
                    )
            self.layers.append(Layer("activation", None, {"function": fn, "parameter": parameter}, origin))
            return shape
        if op == "Conv":
            return self.conv(node, attrs, shape, pad or (0, 0), origin)
        if op in ("AveragePool", "MaxPool"):
            if shape.flat or self.squeeze:
                raise UnsupportedError(f"{where} pools a vector; lipdsl pools signals (channels x length)")
            kernel = [int(k) for k in attrs["kernel_shape"]]
            if len(kernel) != 1:
                raise UnsupportedError(f"{where} has a {len(kernel)}-D kernel {kernel}; lipdsl pools in 1-D")
            strides = [int(s) for s in attrs.get("strides", [1])]
            if any(attrs.get("pads", [0, 0])) or _auto_pad(attrs) not in ("NOTSET", "VALID"):
                raise UnsupportedError(
                    f"{where} pads its input; lipdsl pools without padding",
                    hint="use padding=0 in the pooling layer",
                )
            if any(d != 1 for d in attrs.get("dilations", [1])):
                raise UnsupportedError(f"{where} is dilated; lipdsl pools contiguous windows")
            kind = "avgpool" if op == "AveragePool" else "maxpool"
            options = pool_options(
                kind, kernel[0], strides[0], shape.length, bool(attrs.get("ceil_mode", 0)), where
            )
            self.layers.append(Layer(kind, None, options, origin))
            n = None if shape.length is None else pool_length(shape.length, kernel[0], strides[0])
            if n is not None and n < 1:
                raise UnsupportedError(f"{where} has a kernel longer than its input ({shape.length})")
            return Shape(shape.channels, n)
        if op in ("GlobalAveragePool", "ReduceMean"):
            if shape.flat:
                raise UnsupportedError(f"{where} averages a vector; lipdsl averages signals over time")
            if op == "ReduceMean":
                axes = attrs.get("axes")
                if axes is None and len(node.input) > 1 and node.input[1]:
                    axes = [int(a) for a in self.const(node, 1, "axes")]
                if axes is None or sorted(a % 3 for a in axes) != [2]:
                    raise UnsupportedError(
                        f"{where} averages over axes {axes}; lipdsl supports the mean over "
                        "time (axis 2 or -1) only"
                    )
                self.squeeze = bool(attrs.get("keepdims", 1))
            else:
                self.squeeze = True
            self.layers.append(Layer("global_avgpool", None, {}, origin))
            return Shape(shape.channels, flat=True)
        if op in ("Flatten", "Reshape", "Squeeze"):
            return self.flatten(node, attrs, shape, origin)
        if op == "Gemm":
            return self.gemm(node, attrs, shape, origin)
        if op == "MatMul":
            if not shape.flat or self.squeeze:
                raise UnsupportedError(
                    f"{where} multiplies a signal; lipdsl's dense layers take a vector", hint="flatten first"
                )
            B = self.const(node, 1, "right factor")
            if B.ndim != 2 or B.shape[0] != shape.channels:
                raise UnsupportedError(
                    f"{where}: expected a ({shape.channels}, n) matrix, got shape {B.shape}"
                )
            key = self.keys.add(node.input[1], B.T)
            self.notes.append(
                f"{key} is the transpose of the MatMul factor {node.input[1]!r} (PyTorch layout (out, in))"
            )
            self.layers.append(
                Layer(
                    "dense",
                    layer_name(node.input[1], self.taken),
                    {"n_in": B.shape[0], "n_out": B.shape[1], "weight": key, "bias": None},
                    origin,
                )
            )
            return Shape(B.shape[1], flat=True)
        if op == "Add":
            return self.add(node, shape, origin)
        if op == "BatchNormalization":
            raise UnsupportedError(
                f"{where} is a batch normalisation that was not folded into the convolution before it",
                hint="export in eval mode with do_constant_folding=True, or fold "
                "it first (torch.nn.utils.fusion.fuse_conv_bn_eval)",
            )
        raise UnsupportedError(f"{where} is not supported", hint=f"lipdsl imports {_ONNX_SUPPORTED}")

    def conv(self, node, attrs, shape: Shape, pad: tuple[int, int], origin: str) -> Shape:
        where = self.where(node)
        if shape.flat or self.squeeze:
            raise UnsupportedError(f"{where} convolves a vector; expected a signal (channels x length)")
        W = self.const(node, 1, "weight")
        if W.ndim != 3:
            raise UnsupportedError(
                f"{where} has a weight of shape {W.shape}; lipdsl supports 1-D convolutions "
                "(weight (c_out, c_in, k))"
            )
        if int(attrs.get("group", 1)) != 1:
            raise UnsupportedError(
                f"{where} is a grouped convolution (group={attrs['group']})",
                hint="lipdsl supports group=1 (dense channel mixing) only",
            )
        c_out, c_in, k = W.shape
        if c_in != shape.channels:
            raise UnsupportedError(f"{where} expects {c_in} input channels, got {shape.channels}")
        if list(attrs.get("kernel_shape", [k])) != [k]:
            raise UnsupportedError(
                f"{where} has kernel_shape {attrs['kernel_shape']} but a weight of length {k}"
            )
        stride = int(attrs.get("strides", [1])[0])
        dilation = int(attrs.get("dilations", [1])[0])
        auto = _auto_pad(attrs)
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            reach = dilation * (k - 1)
            if shape.length is None:
                if stride != 1:
                    raise UnsupportedError(
                        f"{where}: auto_pad {auto} with stride {stride} depends on the input "
                        "length, which is symbolic",
                        hint="pass --length",
                    )
                total = reach
            else:  # on the length after a Pad node before the conv, as ONNX computes it
                padded = shape.length + pad[0] + pad[1]
                n_out = -(-padded // stride)
                total = max(0, (n_out - 1) * stride + reach + 1 - padded)
            small, big = total // 2, total - total // 2
            pl, pr = (small, big) if auto == "SAME_UPPER" else (big, small)
        elif auto == "VALID":
            pl, pr = 0, 0
        else:
            pads = [int(p) for p in attrs.get("pads", [0, 0])]
            pl, pr = pads[0], pads[1]
        pl, pr = pl + pad[0], pr + pad[1]
        padding = padding_form(pl, pr, k, stride, dilation, shape.length, where)
        if padding == 0:
            padding = "valid"
        bias_key = None
        if len(node.input) > 2 and node.input[2]:
            b = self.const(node, 2, "bias")
            bias_key = self.keys.add(node.input[2], b.reshape(-1))
        key = self.keys.add(node.input[1], W)
        self.layers.append(
            Layer(
                "conv1d",
                layer_name(node.input[1], self.taken),
                {
                    "c_in": c_in,
                    "c_out": c_out,
                    "kernel": k,
                    "stride": stride,
                    "dilation": dilation,
                    "padding": padding,
                    "weight": key,
                    "bias": bias_key,
                },
                origin,
            )
        )
        pl_s, pr_s = conv1d_padding(padding, k, dilation)
        n = None if shape.length is None else conv1d_length(shape.length, k, stride, dilation, pl_s, pr_s)
        if n is not None and n < 1:
            raise UnsupportedError(f"{where} has no output for an input of length {shape.length}")
        return Shape(c_out, n)

    def flatten(self, node, attrs, shape: Shape, origin: str) -> Shape:
        where, op = self.where(node), node.op_type
        if op == "Squeeze":
            axes = attrs.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                axes = [int(a) for a in self.const(node, 1, "axes")]
            if self.squeeze and axes is not None and [a % 3 for a in axes] == [2]:
                self.squeeze = False
                return shape
            raise UnsupportedError(
                f"{where} squeezes axes {axes}; supported only to drop the time axis left by a "
                "global average pool"
            )
        if op == "Flatten" and int(attrs.get("axis", 1)) != 1:
            raise UnsupportedError(
                f"{where} flattens from axis {attrs['axis']}; lipdsl flattens from axis 1 "
                "(keeping the batch axis)"
            )
        size = shape.channels if (shape.flat or self.squeeze) else shape.size
        if op == "Reshape":
            target = [int(t) for t in self.const(node, 1, "shape")]
            ok = (
                len(target) == 2
                and (target[1] == size or (target[1] == -1 and target[0] in (0, 1)))
                and target[0] in (0, -1, 1)
            )
            if not ok or (shape.length is None and not shape.flat and not self.squeeze):
                raise UnsupportedError(
                    f"{where} reshapes to {target}, which is not a flatten of the {shape} signal",
                    hint="lipdsl supports reshape to (batch, -1) only",
                )
        if shape.flat or self.squeeze:
            self.squeeze = False
            return Shape(size, flat=True)
        if shape.length is None:
            raise UnsupportedError(
                f"{where} flattens a signal of unknown length",
                hint="pass --length, or use a global average pool before the dense part",
            )
        self.layers.append(Layer("flatten", None, {}, origin))
        return Shape(size, flat=True)

    def gemm(self, node, attrs, shape: Shape, origin: str) -> Shape:
        where = self.where(node)
        if not shape.flat or self.squeeze:
            raise UnsupportedError(
                f"{where} multiplies a {shape} signal; lipdsl's dense layers take a vector",
                hint="flatten first",
            )
        if int(attrs.get("transA", 0)):
            raise UnsupportedError(f"{where} has transA=1; the input must be (batch, features)")
        B = self.const(node, 1, "weight")
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        trans = bool(attrs.get("transB", 0))
        W = alpha * (B if trans else B.T)
        if W.ndim != 2 or W.shape[1] != shape.channels:
            raise UnsupportedError(
                f"{where}: a weight for {shape.channels} inputs was expected, got B of shape "
                f"{B.shape} (transB={int(trans)})"
            )
        n_out = W.shape[0]
        key = self.keys.add(node.input[1], W)
        if not trans or alpha != 1.0:
            self.notes.append(
                f"{key} is {'alpha * ' if alpha != 1.0 else ''}"
                f"{'B' if trans else 'the transpose of B'} of {where} (PyTorch layout (out, in))"
            )
        bias_key = None
        if len(node.input) > 2 and node.input[2]:
            C = beta * np.asarray(self.const(node, 2, "bias"), dtype=np.float64)
            if C.size not in (1, n_out) or C.ndim > 2 or (C.ndim == 2 and C.shape[0] != 1):
                raise UnsupportedError(f"{where}: bias of shape {C.shape} is not a per-output bias")
            bias_key = self.keys.add(node.input[2], np.broadcast_to(C.reshape(-1), (n_out,)))
            if beta != 1.0 or C.size == 1:
                self.notes.append(f"{bias_key} is beta * C of {where}, broadcast to ({n_out},)")
        self.layers.append(
            Layer(
                "dense",
                layer_name(node.input[1], self.taken),
                {"n_in": W.shape[1], "n_out": n_out, "weight": key, "bias": bias_key},
                origin,
            )
        )
        return Shape(n_out, flat=True)

    def add(self, node, shape: Shape, origin: str) -> Shape:
        """``x + c`` right after a dense or conv layer: folded into that layer's bias."""
        where = self.where(node)
        const_index = 1 if node.input[1] in self.consts else 0
        c = np.asarray(self.consts[node.input[const_index]][0], dtype=np.float64)
        # Only value-changing nodes append layers (Identity, Dropout, no-op reshapes do not), so a dense or
        # conv last layer means this Add acts directly on that layer's output.
        last = self.layers[-1] if self.layers else None
        if last is None or last.kind not in ("dense", "conv1d"):
            raise UnsupportedError(
                f"{where} adds a constant that is not the bias of a dense or conv layer",
                hint="lipdsl folds Add into the bias of the MatMul/Conv right before it",
            )
        n = last.options["n_out"] if last.kind == "dense" else last.options["c_out"]
        squeezed = (
            c.reshape(-1) if c.size == n else (np.full(n, float(c.reshape(-1)[0])) if c.size == 1 else None)
        )
        layout_ok = _bias_layout(c.shape, n, signal=last.kind == "conv1d")
        if squeezed is None or not layout_ok:
            raise UnsupportedError(
                f"{where} adds a constant of shape {c.shape}, not a per-channel bias of the "
                f"{n} outputs before it"
                + (" (it broadcasts over the batch axis)" if c.ndim > (3 if last.kind == "conv1d" else 2)
                   or (c.ndim == (3 if last.kind == "conv1d" else 2) and c.shape[0] != 1) else "")
            )
        old = last.options.get("bias")
        total = squeezed if old is None else self.keys.tensors[old] + squeezed
        key = self.keys.add(node.input[const_index], total)
        if old is not None:
            self.notes.append(f"{key} is the sum of {old} and the constant added by {where}")
        self.layers[-1] = Layer(
            last.kind, last.name, {**last.options, "bias": key}, last.origin + f" + {origin}"
        )
        return shape


def _bias_layout(shape: tuple[int, ...], n: int, signal: bool) -> bool:
    """Whether a constant of ``shape`` added to (batch, n[, time]) outputs is a per-channel bias.

    Broadcasting aligns shapes on the right: the constant, padded with leading 1s to the output's rank, must
    be 1 on the batch axis (else it adds a batch axis of its own: another network), 1 or n on the channel
    axis, and 1 on the time axis (else it is not constant over time).
    """
    rank = 3 if signal else 2
    if len(shape) > rank:
        return False
    full = (1,) * (rank - len(shape)) + tuple(shape)
    return full[0] == 1 and full[1] in (1, n) and (not signal or full[2] == 1)


def _auto_pad(attrs: Mapping[str, Any]) -> str:
    value = attrs.get("auto_pad", b"NOTSET")
    return value.decode() if isinstance(value, bytes) else str(value)
