"""Check an import against its model: (onnx.ModelProto, Imported) -> None, or an error naming the first layer
whose output differs (``onnx.reference`` on the model vs lipdsl's forward pass on random inputs)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from lipdsl.errors import UnsupportedError

#: Largest input (batch x channels x samples) the reference check evaluates.
MAX_CHECK_VALUES = 2**22


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
