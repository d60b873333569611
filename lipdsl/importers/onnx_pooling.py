"""Read global average pools as exporters write them: a graph being rewritten (``onnx_graph._Graph``) -> the
same graph with each ``Unsqueeze -> ReduceMean [-> Squeeze]`` that averages a signal over time replaced by
one ``ReduceMean`` over the time axis (which the reader takes as ``global_avgpool``).

torch's dynamo exporter writes ``nn.AdaptiveAvgPool1d(1)`` on a ``(N, C, L)`` signal as its 2-D pool:
``Unsqueeze`` to ``(N, C, 1, L)``, ``ReduceMean`` over the last two axes (``keepdims=1``: ``(N, C, 1, 1)``),
``Squeeze`` back to ``(N, C, 1)``. Each axis is followed through the three nodes (batch ``N``, channels
``C``, time ``L``, inserted axes of size 1): the nodes are the mean over time exactly when the mean covers
``L`` and no axis but ``L`` and inserted ones, and what is left is ``(N, C)`` (``ReduceMean`` over axis 2
with ``keepdims=0``) or ``(N, C, 1)`` (``keepdims=1``). Axes come from attributes or, from opset 13
(``Unsqueeze``, ``Squeeze``) and opset 18 (``ReduceMean``), from constant inputs; negative axes count from
the end; a ``ReduceMean`` without axes (all axes, or the identity with ``noop_with_empty_axes``) is not a
mean over time. Anything else is left as it is, and the reader names the node it cannot read.
"""

from __future__ import annotations

import numpy as np

from lipdsl.importers.onnx_tensors import node_label


def merge_unsqueezed_means(g) -> None:
    """Rewrite every ``Unsqueeze -> ReduceMean [-> Squeeze]`` mean over time of ``g`` (module docstring)."""
    for mean in [n for n in g.nodes if n.op_type == "ReduceMean"]:
        unsq = g.producer(mean.input[0])
        if unsq is None or unsq.op_type != "Unsqueeze" or g.single_user(unsq.output[0]) is not mean:
            continue
        if g.ranks.get(unsq.input[0]) != 3:  # (a signal (N, C, L); anything else is not a pool over time)
            continue
        labels = _unsqueezed(["N", "C", "L"], _axes(g, unsq, 13))
        labels = None if labels is None else _reduced(labels, g, mean)
        if labels is None:
            continue
        squeeze = g.single_user(mean.output[0])
        if squeeze is not None and squeeze.op_type == "Squeeze" and squeeze.input[0] == mean.output[0]:
            squeezed = _squeezed(labels, _axes(g, squeeze, 13))
            labels, last = (labels, mean) if squeezed is None else (squeezed, squeeze)
        else:
            squeeze, last = None, mean
        if labels not in (["N", "C"], ["N", "C", "1"]):
            continue
        keepdims = int(len(labels) == 3)
        if g.opset >= 18:
            axes = g.new_const(f"{mean.name or 'mean'}_axes", np.array([2]), dtype=np.int64)
            new = g.onnx.helper.make_node("ReduceMean", [unsq.input[0], axes], [last.output[0]],
                                          name=mean.name, keepdims=keepdims)
        else:
            new = g.onnx.helper.make_node("ReduceMean", [unsq.input[0]], [last.output[0]], name=mean.name,
                                          axes=[2], keepdims=keepdims)
        g.replace_node(mean, new)
        g.nodes.remove(unsq)
        if last is squeeze:
            g.nodes.remove(squeeze)
        g.notes.append(
            f"{node_label(unsq)}, {node_label(mean)}"
            + (f" and {node_label(squeeze)}" if last is squeeze else "")
            + " average the signal over time: a global average pool"
        )


def _axes(g, node, input_from: int) -> list[int] | None:
    """A node's ``axes``: its attribute, else (from opset ``input_from``) its constant second input; None
    when it has none or they are not constant."""
    attrs = g.attrs(node)
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if g.opset >= input_from and len(node.input) > 1 and node.input[1] in g.consts:
        return [int(a) for a in np.ravel(g.consts[node.input[1]])]
    return None


def _unsqueezed(labels: list[str], axes: list[int] | None) -> list[str] | None:
    """The axes after ``Unsqueeze(axes)``: ``"1"`` at each inserted position (of the output's rank)."""
    if not axes:
        return None
    rank = len(labels) + len(axes)
    where = {a % rank for a in axes}
    if len(where) != len(axes) or any(not -rank <= a < rank for a in axes):
        return None
    rest = iter(labels)
    return ["1" if i in where else next(rest) for i in range(rank)]


def _reduced(labels: list[str], g, mean) -> list[str] | None:
    """The axes after the ``ReduceMean``, if it averages over time ("L") and over inserted axes only: with
    ``keepdims`` each reduced axis is ``"1"``, without it is gone."""
    axes = _axes(g, mean, 18)
    if not axes or any(not -len(labels) <= a < len(labels) for a in axes):
        return None
    where = {a % len(labels) for a in axes}
    reduced = {labels[i] for i in where}
    if "L" not in reduced or not reduced <= {"L", "1"}:
        return None
    if int(g.attrs(mean).get("keepdims", 1)):
        return ["1" if i in where else x for i, x in enumerate(labels)]
    return [x for i, x in enumerate(labels) if i not in where]


def _squeezed(labels: list[str], axes: list[int] | None) -> list[str] | None:
    """The axes after ``Squeeze(axes)`` when each squeezed axis is one of size 1; else None."""
    if not axes or any(not -len(labels) <= a < len(labels) for a in axes):
        return None
    where = {a % len(labels) for a in axes}
    if any(labels[i] != "1" for i in where):
        return None
    return [x for i, x in enumerate(labels) if i not in where]
