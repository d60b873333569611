"""Fold ONNX batch norm: a graph being rewritten (``onnx_graph._Graph``) -> the same graph with each
``BatchNormalization`` folded into the ``Conv`` or ``Gemm`` before it (or the unpadded one after it), the
others left for the reader, which keeps them as ``batchnorm`` layers.

``y = s (x - mean) + beta`` with ``s = gamma / sqrt(var + eps)``: folded into the layer before it as
``W' = diag(s) W``, ``b' = s (b - mean) + beta``, or into the one after it as ``W' = W diag(s)``,
``b' = b + W t`` with ``t = beta - s mean`` (a conv only without zero padding: the padded zeros are not
normalised). A batch norm with neither (pre-activation blocks ``bn -> relu -> conv``, a batch norm after an
activation, on the input, after a residual ``Add``, or before a padded conv) is left in the graph: the
language's ``batchnorm`` layer is exactly PyTorch's ``BatchNorm1d`` in eval mode, zeros padded after it.
"""

from __future__ import annotations

import numpy as np

from lipdsl.errors import UnsupportedError
from lipdsl.importers.onnx_tensors import node_label
from lipdsl.rigorous import range_product


def epsilon(attrs) -> float:
    """A ``BatchNormalization``'s ``epsilon``. ONNX stores it as a float32: the shortest decimal that rounds
    to it (the 1e-5 the model was built with, not 9.99999974737875e-06), as the weights are evaluated in
    float64."""
    return float(str(np.float32(attrs.get("epsilon", 1e-5))))


def fold_batchnorms(g) -> None:
    """Fold every ``BatchNormalization`` of the graph ``g`` that has a layer to fold into (module
    docstring)."""
    for bn in [n for n in g.nodes if n.op_type == "BatchNormalization"]:
        fold_batchnorm(g, bn)


def fold_batchnorm(g, bn) -> None:
    where = node_label(bn)
    a = g.attrs(bn)
    if int(a.get("training_mode", 0)):
        raise UnsupportedError(
            f"{where} is in training mode (normalises with the batch's statistics)",
            hint="export in eval mode (model.eval())",
        )
    for extra in bn.output[1:]:
        if extra and g.consumers(extra):
            raise UnsupportedError(f"{where}: its running-statistics output {extra!r} is used")
    gamma, beta, mean, var = (
        g.const_input(bn, i, w) for i, w in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance"))
    )
    if any(v is None for v in (gamma, beta, mean, var)):
        raise UnsupportedError(f"{where} lacks scale, bias, mean or variance")
    eps = epsilon(a)
    if np.any(var + eps <= 0):
        raise UnsupportedError(f"{where} has variance + epsilon <= 0")
    s = gamma.reshape(-1) / np.sqrt(var.reshape(-1) + eps)
    t = beta.reshape(-1) - s * mean.reshape(-1)
    stem = bn.input[1].rsplit(".", 1)[0] if bn.input[1].endswith(".weight") else bn.name or "bn"
    prev = g.producer(bn.input[0])
    if prev is not None and prev.op_type in ("Conv", "Gemm") and g.single_user(prev.output[0]) is bn:
        _fold_after(g, prev, bn, s, t, stem)
        return
    nxt = g.single_user(bn.output[0])
    if nxt is not None and nxt.op_type in ("Conv", "Gemm") and nxt.input[0] == bn.output[0]:
        _fold_before(g, bn, nxt, s, t, stem)
    # else: no layer to fold into; the reader keeps it as a batchnorm layer


def _weight_bias(g, node) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of a Conv ((c_out, c_in, k)) or a Gemm (as (out, in), alpha and beta applied)."""
    W = g.consts.get(node.input[1])
    if W is None:
        raise UnsupportedError(f"{node_label(node)}: its weight is not a constant")
    if node.op_type == "Conv":
        if W.ndim != 3:
            raise UnsupportedError(
                f"{node_label(node)} has a weight of shape {W.shape}; lipdsl supports 1-D convs"
            )
        if int(g.attrs(node).get("group", 1)) != 1:
            raise UnsupportedError(f"{node_label(node)} is a grouped convolution", hint="group=1 only")
        n_out = W.shape[0]
        b = g.const_input(node, 2, "bias")
        return W, np.zeros(n_out) if b is None else b.reshape(-1)
    a = g.attrs(node)
    if int(a.get("transA", 0)):
        raise UnsupportedError(f"{node_label(node)} has transA=1")
    Wm = float(a.get("alpha", 1.0)) * (W if int(a.get("transB", 0)) else W.T)
    n_out = Wm.shape[0]
    C = g.const_input(node, 2, "bias")
    if C is None:
        b = np.zeros(n_out)
    else:
        C = float(a.get("beta", 1.0)) * np.asarray(C, dtype=np.float64)
        if C.size not in (1, n_out) or (C.ndim == 2 and C.shape[0] != 1) or C.ndim > 2:
            raise UnsupportedError(f"{node_label(node)}: bias of shape {C.shape} is not a per-output bias")
        b = np.broadcast_to(C.reshape(-1), (n_out,)).copy()
    return Wm, b


def _rebuilt(g, node, W, b, stem: str, inputs0: str, output: str):
    wkey = g.display_name(node.input[1])
    bkey = (
        g.display_name(node.input[2])
        if len(node.input) > 2 and node.input[2]
        else (wkey[: -len(".weight")] + ".bias" if wkey.endswith(".weight") else wkey + "_bias")
    )
    wname = g.new_const(f"{wkey}_{stem}", W)  # conv1.weight_bn1: the layer keeps the name conv1
    bname = g.new_const(f"{bkey}_{stem}", b)
    if node.op_type == "Conv":
        a = {k: v for k, v in g.attrs(node).items()}
        return g.onnx.helper.make_node(
            "Conv", [inputs0, wname, bname], [output], name=node.name, **a
        ), wname
    return g.onnx.helper.make_node(
        "Gemm", [inputs0, wname, bname], [output], name=node.name, transB=1
    ), wname


def _folded(bn, node, W, s):
    """``W * s`` (a fold), refused where a product of nonzero entries leaves float64's range
    (``rigorous.range_product``: a lost weight would make a nonzero map look zero)."""
    W2, bad = range_product(W, s)
    if bad is not None:
        raise UnsupportedError(
            f"folding {node_label(bn)} into {node_label(node)} leaves float64's range: weight "
            f"{np.broadcast_to(W, W2.shape)[bad]:.3g} times scale {np.broadcast_to(s, W2.shape)[bad]:.3g}",
            hint="rescale the two layers' weights in the model (the bound scales with them)")
    return W2


def _fold_after(g, prev, bn, s, t, stem) -> None:
    W, b = _weight_bias(g, prev)
    if s.size != W.shape[0]:
        raise UnsupportedError(
            f"{node_label(bn)} normalises {s.size} channels, but {node_label(prev)} gives {W.shape[0]}"
        )
    W2 = _folded(bn, prev, W, s.reshape((-1,) + (1,) * (W.ndim - 1)))
    b2 = s * b + t
    new, wname = _rebuilt(g, prev, W2, b2, stem, prev.input[0], bn.output[0])
    g.replace_node(prev, new)
    g.nodes.remove(bn)
    if prev.output[0] in g.lengths:
        g.lengths[bn.output[0]] = g.lengths[prev.output[0]]
    g.notes.append(
        f"{node_label(bn)} is folded into {node_label(prev)}: {wname} = diag(s) W, "
        "s = gamma / sqrt(var + eps)"
    )


def _fold_before(g, bn, nxt, s, t, stem) -> None:
    if nxt.op_type == "Conv" and g.resolve_padding(nxt, g.lengths.get(nxt.input[0])) != (0, 0):
        return  # the padded zeros are not normalised: the reader keeps the batch norm as a layer
    W, b = _weight_bias(g, nxt)
    if nxt.op_type == "Conv":
        W2 = _folded(bn, nxt, W, s[None, :, None])
        b2 = b + np.einsum("oij,i->o", W, t)
    else:
        if s.size != W.shape[1]:
            raise UnsupportedError(
                f"{node_label(bn)} normalises {s.size} features, {node_label(nxt)} takes {W.shape[1]}"
            )
        W2 = _folded(bn, nxt, W, s[None, :])
        b2 = b + W @ t
    new, wname = _rebuilt(g, nxt, W2, b2, stem, bn.input[0], nxt.output[0])
    g.replace_node(nxt, new)
    g.nodes.remove(bn)
    g.notes.append(
        f"{node_label(bn)} is folded into {node_label(nxt)} after it: {wname} = W diag(s), "
        "s = gamma / sqrt(var + eps)"
    )
