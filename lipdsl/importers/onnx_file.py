"""Read ONNX files: a path -> a checked ``onnx.ModelProto`` with its external data read from the model's
folder, or the model's self-contained bytes (``lipdsl sweep``'s items).

``torch.onnx.export`` (the dynamo exporter, torch's default) keeps the weights of all but tiny models in a
file beside the model (``f.onnx.data``; each tensor a ``location``, ``offset`` and ``length`` in it). Those
files are read with onnx's own loader (``onnx.external_data_helper.load_external_data_for_tensor``), after
lipdsl's checks, made before a byte of them is read (onnx's loader makes some of them too, in recent versions
only): the location is relative and stays in the model's folder (no absolute path, no ``..`` out of it, no
symbolic link leading out), the file is a regular file, ``offset + length`` lies within it, ``length`` is
what the tensor's ``dims`` take, and the model file with all its external data holds at most
:data:`MAX_FILE_BYTES`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from lipdsl.errors import LipdslError, UnsupportedError, shorten
from lipdsl.importers.onnx_tensors import check_dims, check_tensors, model_tensors, require_onnx
from lipdsl.lang.weights import leaves_directory

__all__ = ["MAX_FILE_BYTES", "load_model", "model_bytes"]

#: Largest ONNX model read: the ``.onnx`` file and its external data together (a 1D CNN that lipdsl can
#: bound is far smaller).
MAX_FILE_BYTES = 512 * 2**20

_KEEP_INSIDE = ("keep the data file in the model's folder, as torch.onnx.export writes it (f.onnx.data "
                "beside f.onnx), or save the tensors inside the model: torch.onnx.export(..., "
                "external_data=False), onnx.save(model, path, save_as_external_data=False)")


def _read(path: Path) -> bytes:
    """The bytes of the model file, after checking that it is a regular file of at most MAX_FILE_BYTES."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise LipdslError(f"model file {str(path)!r} not found") from None
    except OSError as exc:
        raise LipdslError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise LipdslError(f"{str(path)!r} is not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise LipdslError(
            f"{str(path)!r} has {st.st_size:,} bytes; lipdsl reads ONNX files up to {MAX_FILE_BYTES:,} bytes",
            hint="a 1D CNN whose Lipschitz bound lipdsl can compute is far smaller",
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LipdslError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None


def _parse(data: bytes, shown: str):
    onnx = require_onnx()
    try:
        return onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types for a bad file
        raise LipdslError(
            f"cannot read {shown!r} as an ONNX model: {exc}",
            hint="is it an .onnx file (e.g. from torch.onnx.export)?",
        ) from None


def load_model(path: str | os.PathLike):
    """Read an ``.onnx`` file and the external data it names, after checking types and sizes ->
    ``onnx.ModelProto`` with every tensor inside.

    Raises
    ------
    LipdslError
        Not a regular file, more than :data:`MAX_FILE_BYTES` with its external data, not an ONNX model,
        external data that is missing or outside the model's folder, or tensors :func:`check_tensors`
        refuses.
    """
    path = Path(path)
    data = _read(path)
    proto = _parse(data, str(path))
    read_external_data(proto, path.parent, len(data))
    check_tensors(proto)
    return proto


def model_bytes(path: str | os.PathLike) -> bytes:
    """The model at ``path`` as the bytes of one self-contained ONNX file (what ``lipdsl sweep`` hands its
    workers): the file's own bytes, or for a model with external data, the model with that data read in
    (:func:`load_model`'s checks). Bytes that do not parse as a model are returned as read: the worker's
    import says what is wrong with them.

    Raises
    ------
    LipdslError
        The file cannot be read, is too large, or its external data is refused (:func:`load_model`).
    """
    path = Path(path)
    data = _read(path)
    try:
        proto = _parse(data, str(path))
    except LipdslError:
        return data
    from onnx.external_data_helper import uses_external_data

    if not any(uses_external_data(t) for t, _ in model_tensors(proto)):
        return data
    read_external_data(proto, path.parent, len(data))
    check_tensors(proto)
    return proto.SerializeToString()


def read_external_data(proto, folder: Path, model_size: int) -> None:
    """Read the tensors that ``proto`` keeps in files of ``folder`` into it, with onnx's loader, after the
    checks of the module docstring (all of them for every tensor first: nothing is read from a model that
    any check refuses)."""
    require_onnx()
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor, uses_external_data

    external = [(t, what) for t, what in model_tensors(proto) if uses_external_data(t)]
    base = os.path.realpath(folder)
    total = model_size
    for t, what in external:
        values = check_dims(t, what)
        try:
            info = ExternalDataInfo(t)
        except ValueError as exc:
            raise UnsupportedError(f"{what}: its external data is malformed: {exc}") from None
        location = info.location
        shown = f"{what} keeps its data in {shorten(location)!r}"
        if not location:
            raise UnsupportedError(f"{what} keeps its data in an external file, but names none")
        if "\0" in location:  # (no file name holds one; os.path would raise ValueError)
            raise UnsupportedError(f"{shown}, a name with a NUL character, which no file has",
                                   hint="the model file is damaged: export again")
        if os.path.isabs(location) or leaves_directory(location):
            how = "an absolute path" if os.path.isabs(location) else "a path out of the model's folder"
            raise UnsupportedError(f"{shown}, {how}; lipdsl reads external data from the model's own folder "
                                   "only", hint=_KEEP_INSIDE)
        target = os.path.realpath(os.path.join(folder, location))
        if not _inside(base, target):
            raise UnsupportedError(f"{shown}, which leads out of the model's folder (a symbolic link); "
                                   "lipdsl reads external data from the model's own folder only",
                                   hint=_KEEP_INSIDE)
        try:
            st = os.stat(target)
        except FileNotFoundError:
            raise LipdslError(f"{shown}, which is not in the model's folder {str(folder) or '.'!r}",
                              hint="copy the data file along with the model (torch.onnx.export writes "
                              "f.onnx.data beside f.onnx)") from None
        except OSError as exc:
            raise LipdslError(f"{shown}, which cannot be read: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise LipdslError(f"{shown}, which is not a regular file")
        offset = info.offset or 0
        length = info.length if info.length is not None else max(st.st_size - offset, 0)
        if offset + length > st.st_size:
            raise UnsupportedError(
                f"{shown} at bytes {offset:,} to {offset + length:,}, but the file has {st.st_size:,} bytes",
                hint="the data file does not belong to this model (or is damaged): export again")
        want = values * _itemsize(t)
        if length != want:
            raise UnsupportedError(
                f"{what} has dims {list(t.dims)} ({want:,} bytes) but {length:,} bytes in "
                f"{shorten(location)!r}",
                hint="the data file does not belong to this model (or is damaged): export again")
        total += length
        if total > MAX_FILE_BYTES:
            raise LipdslError(
                f"the model and its external data have more than {MAX_FILE_BYTES:,} bytes; lipdsl reads "
                f"ONNX models up to {MAX_FILE_BYTES:,} bytes",
                hint="a 1D CNN whose Lipschitz bound lipdsl can compute is far smaller")
    for t, what in external:
        try:
            load_external_data_for_tensor(t, str(folder))
        except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError, ValueError, OSError
            raise UnsupportedError(f"{what}: onnx refuses to read its external data: {exc}",
                                   hint=_KEEP_INSIDE) from None


def _inside(base: str, target: str) -> bool:
    try:
        return os.path.commonpath([base, target]) == base
    except ValueError:  # (two drives on Windows)
        return False


def _itemsize(t) -> int:
    onnx = require_onnx()
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize)
    except (KeyError, TypeError, ValueError):
        raise UnsupportedError(f"tensor {t.name!r} has a data type (#{t.data_type}) that lipdsl does not "
                               "read from external data") from None
