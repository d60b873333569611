"""Convert ONNX nodes one by one: a node of the chain and the current shape -> layer records (conv, pools,
activations, flatten, Gemm/MatMul, bias adds) and the next shape; mixed into ``importer._OnnxReader``, which
walks the graph."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from lipdsl.errors import UnsupportedError
from lipdsl.importers.spec import Layer, layer_name, padding_form, pool_options
from lipdsl.lang.check import conv1d_length, conv1d_padding, pool_length
from lipdsl.lang.typed import Shape

_ONNX_SUPPORTED = (
    "Conv (1-D), Relu, Tanh, Sigmoid, LeakyRelu, Elu, AveragePool, MaxPool, GlobalAveragePool, "
    "ReduceMean over time (also after an Unsqueeze, the dynamo exporter's AdaptiveAvgPool1d(1)), Flatten, "
    "Reshape (as a flatten), Squeeze (after a global pool), "
    "Gemm, MatMul + Add, BatchNormalization (inference), Pad (zeros, before a Conv), Identity, Dropout, "
    "Add of two branches from one signal (a residual block)"
)


class OnnxNodes:
    """The node-by-node conversions of ``_OnnxReader`` (its state: ``layers``, ``consts``, ``keys``,
    ``taken``, ``notes``; its helpers ``attrs``, ``const``, ``where``)."""

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
            return self.batchnorm(node, attrs, shape, origin)
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

    def batchnorm(self, node, attrs, shape: Shape, origin: str) -> Shape:
        """A batch norm ``onnx_batchnorm`` could not fold -> a ``batchnorm`` layer (PyTorch's
        ``BatchNorm1d`` in eval mode, on the signal or vector), its four tensors under their own names:
        ``weights P`` when they are ``P.weight``, ``P.bias``, ``P.running_mean``, ``P.running_var`` (a
        state_dict's names), else each named."""
        from lipdsl.importers.onnx_batchnorm import epsilon

        where = self.where(node)
        c = shape.channels
        keys = {}
        for i, role in enumerate(("weight", "bias", "running_mean", "running_var"), 1):
            v = np.asarray(self.const(node, i, role), dtype=np.float64)
            if v.size != c:
                raise UnsupportedError(f"{where}: its {role} has {v.size} values for {c} channels")
            keys[role] = self.keys.add(node.input[i], v.reshape(-1))
        stem = keys["weight"][: -len(".weight")] if keys["weight"].endswith(".weight") else None
        prefix = stem if stem and all(k == f"{stem}.{role}" for role, k in keys.items()) else None
        self.layers.append(
            Layer("batchnorm", layer_name(node.input[1], self.taken),
                  {"channels": c, "prefix": prefix, **keys, "eps": epsilon(attrs)}, origin)
        )
        self.notes.append(f"{where} has no conv or dense layer to fold into: kept as a batchnorm layer")
        return shape

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
