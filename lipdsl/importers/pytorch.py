"""PyTorch in: an nn.Module (read directly, or through an in-memory ONNX export), or a state_dict with an
architecture spec -> Imported (a .lip spec and its tensors)."""

from __future__ import annotations

import io
import numbers
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from lipdsl.errors import LipdslError, UnsupportedError
from lipdsl.importers.importer import ImportError_, import_onnx
from lipdsl.importers.spec import (
    Imported,
    Keys,
    Layer,
    layer_name,
    network_name,
    padding_form,
    pool_options,
    staged,
)
from lipdsl.importers.weight_norm import WeightNormError, weight_norm_key, weight_norm_pairs, with_weight_norm
from lipdsl.importers.onnx_tensors import require_onnx
from lipdsl.importers.retarget import Retargeted
from lipdsl.lang.ast import TensorRef
from lipdsl.lang.check import conv1d_length, conv1d_padding, plural, pool_length
from lipdsl.lang.typed import Shape
from lipdsl.lang.weights import KeyIndex, key_matches, spelt_key, spelt_tensors, tensor_refs


def _require_torch():
    try:
        import torch
    except ModuleNotFoundError:
        raise LipdslError("this needs PyTorch", hint="pip install 'lipdsl[torch]'") from None
    return torch


def _as_input_shape(input_shape: Any) -> Shape:
    """``(channels, length)``, ``(channels, None)`` (any length) or ``(features,)``, a leading batch axis
    ``None`` dropped, as a ``Shape``; sizes are positive integers of any integral type (``numpy.int64``
    too, not ``True``)."""
    def size(v: Any) -> int | None:
        ok = isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
        return int(v) if ok else None

    dims = (input_shape,) if isinstance(input_shape, numbers.Integral) else tuple(input_shape)
    if dims and dims[0] is None and len(dims) >= 2:  # a leading batch axis given as None
        dims = dims[1:]
    if len(dims) == 1 and size(dims[0]) is not None:
        return Shape(size(dims[0]), flat=True)
    if len(dims) == 2 and size(dims[0]) is not None and (dims[1] is None or size(dims[1]) is not None):
        return Shape(size(dims[0]), None if dims[1] is None else size(dims[1]))
    raise LipdslError(
        f"input_shape must be (channels, length), (channels, None) or (features,), got {input_shape!r}"
    )


def _modules(module, prefix: str = "") -> Iterable[tuple[str, Any]]:
    import torch.nn as nn

    if isinstance(module, nn.Sequential):
        for child_name, child in module.named_children():
            yield from _modules(child, f"{prefix}{child_name}.")
    else:
        yield prefix.rstrip("."), module


def import_torch(module: Any, input_shape: Any, *, name: str | None = None) -> Imported:
    """Convert an in-memory ``torch.nn.Sequential`` (nested ones are flattened) -> Imported.

    Supported modules: ``Conv1d`` (groups 1, zero padding; a ``ConstantPad1d``/``ZeroPad1d`` of zeros just
    before it is folded into its padding, e.g. ``ZeroPad1d((k - 1, 0))`` for a causal conv), ``ReLU``,
    ``Tanh``, ``Sigmoid``, ``LeakyReLU``, ``ELU`` (alpha >= 0), ``AvgPool1d``/``MaxPool1d`` (no padding,
    floor mode), ``AdaptiveAvgPool1d(1)`` (global
    average pooling), ``Flatten``, ``Linear``, and ``Identity``/``Dropout`` (dropped: the inference map).

    Parameters
    ----------
    module : torch.nn.Module
        An ``nn.Sequential``, or a single supported module.
    input_shape : tuple
        ``(channels, length)``, ``(channels, None)`` for any length, or ``(features,)``; no batch axis.
    name : str, optional
        The network's name (default ``module``'s class name in snake case).

    Raises
    ------
    UnsupportedError
        A module the language cannot express, named by its path in the Sequential (``features.3``) and type.
    """
    torch = _require_torch()
    import torch.nn as nn

    shape = start = _as_input_shape(input_shape)
    if _needs_export(module):
        return _import_torch_via_onnx(module, shape, name)
    keys, layers, taken = Keys(), [], set()
    squeeze = False
    pending = (0, 0)  # zeros (left, right) of ConstantPad1d modules waiting for their Conv1d
    for path, m in _modules(module):
        where = f"module {path or '<root>'!r} ({type(m).__name__})"
        origin = f"{path or 'module'}: {type(m).__name__}"

        def param(attr: str, m=m, path=path):  # bound now: called within this iteration only
            t = getattr(m, attr)
            if t is None:
                return None
            return keys.add(f"{path}.{attr}" if path else attr, t.detach().to(torch.float64).cpu().numpy())

        if isinstance(m, (nn.Identity, nn.Dropout)):
            continue
        if isinstance(m, nn.ConstantPad1d):  # ZeroPad1d too: folded into the next Conv1d's padding
            if float(m.value) != 0.0 or shape.flat:
                raise UnsupportedError(
                    f"{where} pads with {m.value!r}; lipdsl folds zero padding of a signal "
                    "into the next Conv1d only"
                )
            pending = (pending[0] + int(m.padding[0]), pending[1] + int(m.padding[1]))
            continue
        if pending != (0, 0) and not isinstance(m, nn.Conv1d):
            raise UnsupportedError(
                f"{where} follows a padding module; lipdsl folds zero padding into the next Conv1d only"
            )
        if isinstance(m, nn.Conv1d):
            if shape.flat:
                raise UnsupportedError(f"{where} convolves a vector; expected a signal")
            if m.groups != 1 or m.padding_mode != "zeros" or m.in_channels != shape.channels:
                raise UnsupportedError(
                    f"{where}: lipdsl supports groups=1, zero padding and {shape.channels} "
                    f"input channels (got groups={m.groups}, padding_mode={m.padding_mode!r}, "
                    f"in_channels={m.in_channels})"
                )
            k, s, d = m.kernel_size[0], m.stride[0], m.dilation[0]
            if isinstance(m.padding, str):
                padding: str | int = "valid" if m.padding == "valid" else "same"
            else:
                padding = int(m.padding[0]) or "valid"
            if pending != (0, 0):
                pl, pr = conv1d_padding(padding, k, d)
                padding = (
                    padding_form(pl + pending[0], pr + pending[1], k, s, d, shape.length, where) or "valid"
                )
                pending = (0, 0)
            layers.append(
                Layer(
                    "conv1d",
                    layer_name(f"{path}.weight", taken),
                    {
                        "c_in": m.in_channels,
                        "c_out": m.out_channels,
                        "kernel": k,
                        "stride": s,
                        "dilation": d,
                        "padding": padding,
                        "weight": param("weight"),
                        "bias": param("bias"),
                    },
                    origin,
                )
            )
            pl, pr = conv1d_padding(padding, k, d)
            n = None if shape.length is None else conv1d_length(shape.length, k, s, d, pl, pr)
            if n is not None and n < 1:
                raise UnsupportedError(f"{where} has no output for an input of length {shape.length}")
            shape = Shape(m.out_channels, n)
        elif isinstance(m, nn.Linear):
            if not shape.flat or m.in_features != shape.channels:
                raise UnsupportedError(
                    f"{where} takes {m.in_features} features, but gets a {shape} "
                    f"{'vector' if shape.flat else 'signal'}",
                    hint=None if shape.flat else "put nn.Flatten() before it",
                )
            layers.append(
                Layer(
                    "dense",
                    layer_name(f"{path}.weight", taken),
                    {
                        "n_in": m.in_features,
                        "n_out": m.out_features,
                        "weight": param("weight"),
                        "bias": param("bias"),
                    },
                    origin,
                )
            )
            shape = Shape(m.out_features, flat=True)
        elif isinstance(m, (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU)):
            fn = {
                nn.ReLU: "relu",
                nn.Tanh: "tanh",
                nn.Sigmoid: "sigmoid",
                nn.LeakyReLU: "leaky_relu",
                nn.ELU: "elu",
            }[type(m)]
            parameter = {
                "leaky_relu": getattr(m, "negative_slope", None),
                "elu": getattr(m, "alpha", None),
            }.get(fn)
            if fn == "elu" and parameter < 0:
                raise UnsupportedError(
                    f"{where} has alpha {parameter:g} < 0", hint="lipdsl's elu needs alpha >= 0"
                )
            layers.append(
                Layer(
                    "activation",
                    None,
                    {"function": fn, "parameter": None if parameter is None else float(parameter)},
                    origin,
                )
            )
        elif isinstance(m, (nn.AvgPool1d, nn.MaxPool1d)):
            k = _single(m.kernel_size)
            s = _single(m.stride) if m.stride is not None else k
            if shape.flat:
                raise UnsupportedError(f"{where} pools a vector; expected a signal")
            if _single(m.padding) != 0 or (
                isinstance(m, nn.MaxPool1d) and (_single(m.dilation) != 1 or m.return_indices)
            ):
                raise UnsupportedError(
                    f"{where}: lipdsl pools without padding or dilation", hint="use padding=0"
                )
            kind = "avgpool" if isinstance(m, nn.AvgPool1d) else "maxpool"
            layers.append(
                Layer(kind, None, pool_options(kind, k, s, shape.length, m.ceil_mode, where), origin)
            )
            n = None if shape.length is None else pool_length(shape.length, k, s)
            if n is not None and n < 1:
                raise UnsupportedError(f"{where} has a kernel longer than its input ({shape.length})")
            shape = Shape(shape.channels, n)
        elif isinstance(m, nn.AdaptiveAvgPool1d):
            size = _single(m.output_size)
            if shape.flat or size != 1:
                raise UnsupportedError(
                    f"{where}: lipdsl supports AdaptiveAvgPool1d(1) (global average pooling) only",
                    hint="use AvgPool1d with a fixed kernel",
                )
            layers.append(Layer("global_avgpool", None, {}, origin))
            shape, squeeze = Shape(shape.channels, flat=True), True
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise UnsupportedError(
                    f"{where} flattens dims {m.start_dim}..{m.end_dim}; lipdsl supports Flatten(1, -1) only"
                )
            if squeeze or shape.flat:
                squeeze = False
                continue
            if shape.length is None:
                raise UnsupportedError(
                    f"{where} flattens a signal of unknown length",
                    hint="give the input length, or use AdaptiveAvgPool1d(1) before the dense part",
                )
            layers.append(Layer("flatten", None, {}, origin))
            shape = Shape(shape.size, flat=True)
        else:
            hint = (
                "fold it into the convolution before it (torch.nn.utils.fusion.fuse_conv_bn_eval)"
                if isinstance(m, nn.modules.batchnorm._BatchNorm)
                else "lipdsl converts nn.Sequential of Conv1d, ReLU, Tanh, Sigmoid, LeakyReLU, ELU, "
                "AvgPool1d, "
                "MaxPool1d, AdaptiveAvgPool1d(1), Flatten, Linear, Identity, Dropout"
            )
            raise UnsupportedError(f"{where} is not supported", hint=hint)
        if squeeze and not isinstance(m, nn.AdaptiveAvgPool1d):
            if not isinstance(m, nn.Linear):
                raise UnsupportedError(
                    f"{where} follows AdaptiveAvgPool1d(1); put nn.Flatten() after the pool"
                )
            raise UnsupportedError(
                f"{where} gets the (channels, 1) output of AdaptiveAvgPool1d(1)",
                hint="put nn.Flatten() between them",
            )
    if pending != (0, 0):
        raise UnsupportedError("the module ends with a padding module")
    if not layers:
        raise UnsupportedError("the module has no layer lipdsl can bound")
    net_name = name or module_network_name(module)
    origin = f"torch module {type(module).__name__} (torch {torch.__version__})"
    return Imported(net_name, start, layers, keys.tensors, origin)


def module_network_name(module: Any) -> str:
    """The spec's network name for a module: its class name in snake case (``ResNet1D`` -> ``res_net1d``,
    ``TCN2`` -> ``tcn2``, ``MyHTTPNet`` -> ``my_http_net``): a word starts at a capital after a small letter,
    or at the last capital of a run followed by a small letter."""
    words = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", type(module).__name__)
    return network_name(words.lower())


def _needs_export(module: Any) -> bool:
    """Whether ``module`` goes through ONNX: not an ``nn.Sequential``, or holding batch norm or a module of
    the user's own (``Chomp1d``, a residual block...), which only its ``forward`` defines."""
    import torch.nn as nn

    if not isinstance(module, nn.Sequential):
        return not type(module).__module__.startswith("torch.nn")
    for _, m in _modules(module):
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or not type(m).__module__.startswith("torch.nn"):
            return True
    return False


def _import_torch_via_onnx(module: Any, shape: Shape, name: str | None) -> Imported:
    """Export ``module`` (in eval mode; each submodule's mode is restored afterwards) to ONNX in memory and
    import that: batch norm folded, chomps (``x[:, :, :-p]``) as causal padding, weight norm evaluated, every
    layer checked against the model.

    TorchScript exporter, ``do_constant_folding=False`` so that the parameters keep their names; a symbolic
    time axis when ``shape`` has no length (traced at 64 samples). The module itself is exported, not a
    copy: ``torch.nn.utils.weight_norm``'s computed weight cannot be deep-copied.
    """
    import io
    import warnings

    torch = _require_torch()
    onnx = require_onnx()
    try:
        dtype = next(module.parameters()).dtype
    except StopIteration:
        dtype = torch.float32
    if dtype not in (torch.float32, torch.float64):  # (the layer-by-layer check would fail on rounding)
        raise UnsupportedError(
            f"{type(module).__name__} has {str(dtype).removeprefix('torch.')} parameters; lipdsl exports "
            "float32 or float64 modules to ONNX",
            hint="convert it first: lipdsl.from_torch(module.float(), shape) (float16 and bfloat16 widen to "
            "float32 exactly: the same weights)",
        )
    dims = (1, shape.channels) if shape.flat else (1, shape.channels, shape.length or 64)
    buf = io.BytesIO()
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's DeprecationWarning
            torch.onnx.export(
                module,
                (torch.zeros(dims, dtype=dtype),),
                buf,
                dynamo=False,
                do_constant_folding=False,
                training=torch.onnx.TrainingMode.PRESERVE,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes=None if shape.flat or shape.length else {"x": {2: "length"}},
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types for modules it cannot trace
        raise UnsupportedError(
            f"{type(module).__name__} could not be exported to ONNX: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            hint="lipdsl reads modules other than a plain nn.Sequential through torch.onnx.export",
        ) from None
    finally:
        for m, training in modes:
            m.training = training
    proto = onnx.load_from_string(buf.getvalue())
    net_name = name or module_network_name(module)
    imported = import_onnx(proto, name=net_name)
    imported.origin = f"torch module {type(module).__name__} (torch {torch.__version__}, through ONNX)"
    if module.training:
        imported.notes.insert(0, "the module was in training mode; it was read in eval mode (model.eval())")
    return imported


def _single(v: Any) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The tensors of an ``.npz`` checkpoint (``numpy.savez``), each read as the spec's weight files are
    (``weights.read_npz_member``: no pickles, size caps, headers checked before numpy allocates);
    floating point as float64."""
    import zipfile

    from lipdsl.errors import WeightError
    from lipdsl.lang.weights import read_npz_member

    shown = repr(str(path))
    tensors = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                tensors[key] = read_npz_member(data.zip, key, f"tensor {key!r} in {shown}", None,
                                               failed=f"cannot read {key!r} from {shown}")
    except WeightError as exc:
        raise ImportError_(exc.message, hint=exc.hint) from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ImportError_(f"cannot read {shown} as an .npz of tensors: {exc}") from None
    return {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v for k, v in tensors.items()}


def load_state_dict(path: str | os.PathLike | io.BytesIO, shown: str | None = None) -> dict[str, np.ndarray]:
    """Tensors of a ``torch.save(model.state_dict(), path)`` file, read with ``weights_only=True`` -> float64
    (floating-point tensors; others keep their dtype, integers refused if a spec reads them).

    ``path`` may also be the file's bytes in a ``BytesIO`` (``lipdsl sweep``'s workers); ``shown`` is the
    name messages give it.

    Raises
    ------
    LipdslError
        If the file holds anything but tensors (a whole pickled module is refused: unpickling runs code).
    """
    if not isinstance(path, io.BytesIO):
        path = Path(path)
        if not path.is_file():
            raise ImportError_(f"model file {str(path)!r} not found")
        if path.suffix.lower() == ".npz":  # (numpy.savez of the tensors: no torch needed, as in sweep --like)
            return _load_npz(path)
    torch = _require_torch()
    label = shown or (str(path) if isinstance(path, Path) else "<bytes>")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ... for refused files
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        why = (
            f"it holds a pickled {found.group(1)}"
            if found
            else (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        )
        raise ImportError_(
            f"{label!r} is not a state_dict that loads with torch.load(weights_only=True): {why}",
            hint="save the weights with torch.save(model.state_dict(), path) (a whole pickled module is "
            "never "
            "loaded: unpickling can run any code), export to ONNX, or call lipdsl.from_torch(model, shape) "
            "in Python",
        ) from None
    obj = _the_state_dict(obj, label, torch)
    out = {}
    for k, v in obj.items():
        v = v.detach().cpu()
        if v.is_floating_point():
            out[str(k)] = v.to(torch.float64).numpy()
        else:  # (integers: a batch norm's num_batches_tracked; refused as in an .npz, if a spec reads one)
            try:
                out[str(k)] = v.numpy()
            except (TypeError, RuntimeError):  # a dtype numpy has not (quantized...): as if not there
                continue
    return out


def _the_state_dict(obj: Any, label: str, torch: Any) -> Mapping:
    """The state_dict in what ``torch.load`` returned: ``obj`` itself (names -> tensors), or a training
    checkpoint's one entry that is a state_dict (``{"model": sd, "optimizer": ..., "epoch": 3}``; an
    optimizer's state_dict holds more than tensors)."""
    def is_state_dict(x: Any) -> bool:
        return isinstance(x, Mapping) and bool(x) and all(isinstance(v, torch.Tensor) for v in x.values())

    if is_state_dict(obj):
        return obj
    inner = [k for k, v in obj.items() if is_state_dict(v)] if isinstance(obj, Mapping) else []
    if len(inner) == 1:
        return obj[inner[0]]
    if isinstance(obj, Mapping) and obj:
        held = f"; it holds a dict of {', '.join(repr(str(k)) for k in list(obj)[:8])}" + (
            ", ..." if len(obj) > 8 else "")
    else:
        held = f"; it holds {'an empty ' if isinstance(obj, Mapping) else 'a '}{type(obj).__name__}"
    several = f" ({', '.join(repr(str(k)) for k in inner)} are state_dicts: say which)" if inner else ""
    raise ImportError_(
        f"{label!r} does not hold a state_dict (a mapping of names to tensors){held}{several}",
        hint="save it with torch.save(model.state_dict(), path)" + (
            f", e.g. torch.save(checkpoint[{str(inner[0])!r}], path)" if inner else ""),
    )


def spec_tensors(tensors: Mapping[str, np.ndarray], refs: Iterable[TensorRef] = (),
                 checkpoint: str = "the state_dict") -> dict[str, np.ndarray]:
    """A state_dict's tensors (float64, or integers) -> the tensors a ``--like`` spec reads, under the
    state_dict's names: the weight of each weight-norm pair a reference ``refs`` reads evaluated (``X.weight``
    from its g and v: :func:`weight_norm.with_weight_norm`); other pairs are neither evaluated nor refused.

    Saved to an ``.npz``, they are read as any ``.npz`` is (``weights.key_matches``: a key held as written
    wins, ``_0.weight`` reads ``0.weight``, an ambiguous key is refused naming both tensors); ``import``
    writes them under the keys a spec writes (``weights.spelt_tensors``). Pure (no torch).

    Parameters
    ----------
    refs
        The references of the ``--like`` spec to its (retargeted) weights file: the tensors it reads.
    checkpoint
        How messages name the state_dict (``"the checkpoint 'a.pt'"``).

    Raises
    ------
    WeightNormError
        At the reference's place: a pair it reads does not give a finite weight or also has a plain tensor
        of its name; or it reads a pair of which the state_dict holds only one tensor.
    """
    pairs = weight_norm_pairs(tensors)
    names = [*tensors, *(name for (name, _), pair in pairs.items() if len(pair) == 2)]
    index = KeyIndex(names)
    wanted: dict[str, TensorRef] = {}
    for ref in refs:
        if ref.file is not None or ref.key is None:
            continue
        matches = key_matches(ref.key, index)
        for name in matches:
            wanted.setdefault(name, ref)
        half = next((p for (name, _), p in pairs.items() if len(p) == 1 and spelt_key(name) == ref.key),
                    None)
        if not matches and half is not None:
            (role, key), = half.items()
            missing = "g (the norm)" if role == "v" else "v (the direction)"
            raise WeightNormError(
                f"{checkpoint} holds {key!r} of a weight-norm pair for {ref.key!r}, but not its {missing}",
                ref.span, hint="save the whole state_dict (both tensors of the pair), or the weight itself")
    try:
        return with_weight_norm(tensors, wanted.__contains__)
    except WeightNormError as err:
        err.message = f"{checkpoint}: {err.message}"
        err.args = (err.message,)
        if err.weight in wanted:
            err.span = wanted[err.weight].span
        raise


#: The last part of a checkpoint tensor's name that a ``--like`` spec may leave unread without a warning:
#: these do not change the network's Lipschitz constant (a bias, a batch norm's running mean: shifts only;
#: its step counter).
UNREAD_ALLOWED = ("bias", "running_mean", "num_batches_tracked")


def unread_tensors(net, weights: str, tensors: Mapping[str, np.ndarray]) -> list[str]:
    """The tensors of a checkpoint (``tensors``, saved as the ``--like`` spec's file ``weights``) that the
    checked spec ``net`` does not read (``typed.Network.tensors_read``): a layer of the model left out of the
    spec, whose bound would then be of another network. Not counted: names ending in ``UNREAD_ALLOWED``, a
    weight-norm pair whose effective weight is read, and a tensor equal to one that is read (a parameter
    registered twice, as the TCN's ``conv1`` and ``net.0``). ``tensors`` may be lazy (an ``NpzFile``): values
    are loaded only when some tensor is left unread."""
    read = {key for file, key in net.tensors_read if file == weights}
    read |= {name for name in tensors if (pair := weight_norm_key(name)) is not None and pair[0] in read}
    candidates = [name for name in tensors
                  if name not in read and name.rsplit(".", 1)[-1] not in UNREAD_ALLOWED]
    if not candidates:  # (the usual case: no tensor is loaded from a lazy mapping such as an NpzFile)
        return []
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for name in read & set(tensors):
        value = np.asarray(tensors[name])
        by_shape.setdefault(value.shape, []).append(value)
    unread = []
    for name in candidates:
        value = np.asarray(tensors[name])
        if not any(np.array_equal(value, other) for other in by_shape.get(value.shape, ())):
            unread.append(name)
    return unread


def unread_warning(unread: list[str], checkpoint: str) -> str:
    """The warning for ``unread_tensors``: which, and what it means."""
    more = f" and {len(unread) - 6} more" if len(unread) > 6 else ""
    shown = ", ".join(repr(k) for k in unread[:6]) + more
    return (f"{checkpoint} holds {plural(len(unread), 'tensor')} that the architecture spec never reads "
            f"({shown}): if they belong to layers of the model, the spec leaves those layers out and its "
            "bound is of another network (add them, e.g. 'batchnorm C, weights PREFIX')")


#: A '#' outside double quotes: a comment, which the generated spec keeps as the architecture wrote it.
_COMMENT = re.compile(r'^[^"#\n]*(?:"[^"\n]*"[^"#\n]*)*#', re.M)


def import_state_dict(
    state: str | os.PathLike | Mapping[str, np.ndarray],
    like: str | os.PathLike,
    spec_path: str | os.PathLike,
    weights_path: str | os.PathLike | None = None,
    *,
    allow_outside: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> tuple[Path, Path]:
    """Fill the tensor keys of the architecture spec ``like`` from a state_dict: a new spec and ``.npz``.

    The new spec is ``like``'s text with its ``weights "..."`` lines pointing to the new ``.npz`` (one is
    added before the first layer if there is none). Keys in ``like`` are the state_dict's names in the spec's
    key syntax (:func:`weights.spelt_key`: ``0.weight`` is written ``_0.weight``; a name held as written
    wins over another spelt alike, and a key that could mean two names is refused naming both); a
    weight-normalised parameter (``X.parametrizations.weight.original0/1``, or ``X.weight_g``/``X.weight_v``)
    is read as its effective weight ``X.weight`` (:mod:`lipdsl.importers.weight_norm`).

    The result is checked before anything is written: a missing key or a wrong shape is reported against
    ``like`` (its line, the checkpoint named), and nothing is written; an existing output keeps its content.
    The outputs are written whole or not at all (:func:`spec.staged`).

    Returns
    -------
    (Path, Path)
        The spec and the weights file written.

    Raises
    ------
    LipdslError
        The state_dict cannot be read or holds a bad weight-norm pair; ``like`` cannot be read, parsed or
        checked with these tensors (``err.source`` is ``like``); a file cannot be written.
    """
    from lipdsl.lang.load import load_network
    from lipdsl.lang.parse import parse
    from lipdsl.lang.source import Source

    if isinstance(state, (str, os.PathLike)):
        tensors, checkpoint = load_state_dict(state), f"the checkpoint {Path(state).name!r}"
    else:
        tensors = {str(k): np.asarray(v, dtype=np.float64) for k, v in state.items()}
        checkpoint = "the state_dict"
    try:
        arch = Source.read(like)
    except OSError as exc:
        raise ImportError_(f"cannot read architecture spec {str(like)!r}: {exc.strerror or exc}") from None
    try:
        tree = parse(arch)
        keys = spec_tensors(tensors, tensor_refs(tree), checkpoint)
    except LipdslError as err:
        err.source = arch
        raise
    spec_path = Path(spec_path)
    weights = spec_path.with_suffix(".npz") if weights_path is None else Path(weights_path)
    rel = os.path.relpath(weights.resolve(), spec_path.resolve().parent).replace(os.sep, "/")
    header = (
        f"# Weights from {Path(state).name if isinstance(state, (str, os.PathLike)) else 'a state_dict'}, "
        f"architecture from {Path(like).name}.",
    ) + ((f"# The comments below are {Path(like).name}'s (its weights are replaced by these).",)
         if _COMMENT.search(arch.text) else ())
    try:  # the architecture's own files are beside it: named from the spec's folder in the spec
        spec = Retargeted.of(arch, tree, rel, folder=spec_path.resolve().parent, allow_outside=allow_outside,
                             header=header)
    except LipdslError as err:
        err.source = arch
        raise
    with staged(weights, spec_path) as (tmp_weights, tmp_spec):
        with open(tmp_weights, "wb") as f:
            np.savez(f, **keys)  # (the state_dict's names: read as an .npz of them is, weights.key_matches)
        # the check reads the temporary files: the spec names the temporary .npz, in the same folder
        tmp_rel = os.path.relpath(tmp_weights.resolve(), tmp_spec.resolve().parent).replace(os.sep, "/")
        tmp_spec.write_text(spec.renamed(tmp_rel).text, encoding="utf-8")
        try:
            _, net = load_network(tmp_spec, allow_outside=allow_outside)
        except LipdslError as err:
            raise spec.renamed(tmp_rel).locate(err, checkpoint=checkpoint, written=rel) from None
        unread = unread_tensors(net, tmp_rel, keys)
        if unread:  # (``on_warning``, or Python's warnings)
            message = unread_warning(unread, checkpoint)
            if on_warning is not None:
                on_warning(message)
            else:
                import warnings

                warnings.warn(message, stacklevel=2)
        with open(tmp_weights, "wb") as f:  # under the keys the spec writes: each the tensor it read
            np.savez(f, **spelt_tensors(keys))
        tmp_spec.write_text(spec.text, encoding="utf-8")
    return spec_path, weights
