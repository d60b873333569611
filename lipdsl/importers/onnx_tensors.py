"""ONNX tensors and constant nodes -> checked float64 arrays: sizes checked against what is stored before
anything is allocated, ``Constant`` nodes in every attribute form, output sizes estimated before a constant
subgraph is evaluated; and the helpers every ONNX module shares (``require_onnx``, ``node_label``)."""

from __future__ import annotations

import math

import numpy as np

from lipdsl.errors import LipdslError, UnsupportedError

#: Largest tensor (initializer, constant or evaluated constant), in values: 2**26 float64 values = 512 MiB.
MAX_TENSOR_VALUES = 2**26

# Ops whose all-constant nodes are random: never evaluated as constants.
RANDOM_OPS = frozenset(
    "RandomNormal RandomUniform RandomNormalLike RandomUniformLike Multinomial Bernoulli".split()
)
# Ops evaluated on constants whose output is no larger than the broadcast of their inputs (or smaller).
ELEMENTWISE_OPS = frozenset(
    "Add Sub Mul Div Pow Max Min Mean Sum Where Equal Less Greater LessOrEqual GreaterOrEqual And Or Xor Not "
    "Neg Abs Sqrt Reciprocal Exp Log Sign Floor Ceil Round Relu Tanh Sigmoid Clip Cast CastLike Identity Mod "
    "Erf IsNaN IsInf".split()
)
NOT_LARGER_OPS = frozenset(
    "Reshape Squeeze Unsqueeze Flatten Transpose Shape Size Gather GatherElements Slice ReduceL2 ReduceL1 "
    "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceSumSquare ArgMax ArgMin Split Dropout "
    "Softmax LogSoftmax CumSum NonZero".split()
)
FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def require_onnx():
    try:
        import onnx
    except ModuleNotFoundError:
        raise LipdslError(
            "importing ONNX models needs the package 'onnx'", hint="pip install 'lipdsl[onnx]'"
        ) from None
    return onnx


def node_label(node) -> str:
    return f"node {node.name or node.output[0]!r} ({node.op_type})"


def _tensor_values(t) -> tuple[int, int]:
    """(values ``dims`` announce, values the tensor stores): read from the proto, nothing allocated."""
    onnx = require_onnx()
    announced = math.prod(int(d) for d in t.dims)
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


def check_dims(t, what: str) -> int:
    """The values a TensorProto's ``dims`` announce, refusing negative dims and more than
    :data:`MAX_TENSOR_VALUES` (read from the proto: nothing allocated)."""
    if any(int(d) < 0 for d in t.dims):
        raise UnsupportedError(f"{what} has negative dims {list(t.dims)}")
    announced = math.prod(int(d) for d in t.dims)
    if announced > MAX_TENSOR_VALUES:
        raise UnsupportedError(
            f"{what} has dims {list(t.dims)} ({announced:,} values); lipdsl refuses tensors above "
            f"{MAX_TENSOR_VALUES:,} values"
        )
    return announced


def check_tensor(t, what: str) -> None:
    """Refuse a TensorProto with external data not read in (``onnx_file.load_model`` reads it for a model
    given by its path), negative or huge ``dims``, or fewer stored values than dims say."""
    if t.data_location == 1:  # TensorProto.EXTERNAL
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        raise UnsupportedError(
            f"{what} keeps its data in the external file {location!r}, which lipdsl reads only for a model "
            "given by its path (from the model's folder)",
            hint="pass the .onnx file's path (lipdsl import, lipdsl.from_onnx), or save the tensors inside "
            "the model: torch.onnx.export(..., external_data=False), "
            "onnx.save(model, path, save_as_external_data=False)",
        )
    check_dims(t, what)
    announced, stored = _tensor_values(t)
    if stored != announced and not (stored == 0 and announced == 0):
        raise UnsupportedError(
            f"{what} has dims {list(t.dims)} ({announced:,} values) but stores {stored:,}",
            hint="the file is damaged or was not written by an ONNX exporter",
        )


def model_tensors(proto):
    """Every tensor of the main graph with a name for messages: initializers, then the tensor attributes
    of the nodes (``Constant`` values); sparse ones are refused."""
    graph = proto.graph
    for t in graph.initializer:
        yield t, f"initializer {t.name!r}"
    for t in graph.sparse_initializer:
        raise UnsupportedError(f"sparse initializer {t.values.name!r}: sparse tensors are not supported")
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t, f"{node_label(node)}, attribute {a.name!r}"
            for t in a.tensors:
                yield t, f"{node_label(node)}, attribute {a.name!r}"
            if a.HasField("sparse_tensor"):
                raise UnsupportedError(
                    f"{node_label(node)}: its attribute {a.name!r} is a sparse tensor, "
                    "which lipdsl does not read",
                    hint="export with dense constants",
                )


def check_tensors(proto) -> None:
    """Run :func:`check_tensor` on every tensor of the main graph (:func:`model_tensors`)."""
    for t, what in model_tensors(proto):
        check_tensor(t, what)


# -- constants -----------------------------------------------------------------------------------------------


def constant_value(node) -> np.ndarray:
    """The value of a ``Constant`` node, for every attribute form of the ONNX spec (sparse ones refused)."""
    onnx = require_onnx()
    from onnx import numpy_helper

    if len(node.attribute) != 1:
        raise UnsupportedError(f"{node_label(node)} has {len(node.attribute)} attributes; a Constant has one")
    a = node.attribute[0]
    value = onnx.helper.get_attribute_value(a)
    if a.name == "value":
        return widen(numpy_helper.to_array(value))
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
            f"{node_label(node)} holds a sparse tensor ('sparse_value'), which lipdsl does not read",
            hint="export with dense constants",
        )
    raise UnsupportedError(f"{node_label(node)} has the unknown attribute {a.name!r}")


def widen(a: np.ndarray) -> np.ndarray:
    """Floating arrays as float64 (exact for float16/32/bfloat16); others unchanged."""
    a = np.asarray(a)
    return a.astype(np.float64) if a.dtype.kind == "f" or a.dtype.name == "bfloat16" else a


def estimate_size(node, values: list[np.ndarray | None]) -> int | None:
    """An upper bound on the values a constant node outputs (None: unknown, refuse)."""
    op = node.op_type
    shapes = [np.shape(v) for v in values if v is not None]
    biggest = max((int(np.prod(s)) for s in shapes), default=1)
    try:
        if op in ELEMENTWISE_OPS:
            return int(np.prod(np.broadcast_shapes(*shapes))) if shapes else 1
        if op in NOT_LARGER_OPS:
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
