"""Read what a weight file declares without reading its weights: torch zip archives, ONNX graph inputs
and .npy headers (safetensors headers: `editx.lm.loader.read_header`; LFS pointers: `editx.torchfile`).

Each reader checks the file's own bookkeeping against its size, so a truncated download is found
from a few kilobytes of reads, and raises ModelFilesError with a one-line message.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from editx.errors import ModelFilesError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


# ---- torch zip archives (torch.save since 1.6) ------------------------------------------------------------

class _Storage:
    def __init__(self, dtype: torch.dtype, numel: int) -> None:
        self.dtype, self.numel = dtype, numel


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_args) -> torch.Tensor:
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if extent > storage.numel:
        raise pickle.UnpicklingError(f"a tensor of shape {tuple(size)} lies past the end of its storage")
    return torch.empty(tuple(size), dtype=storage.dtype, device="meta")


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles a state dict's data.pkl into meta tensors; any class but the few a state dict uses is refused."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *_: data
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:  # older torch named CUDA storages
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a plain tensor state dict")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        _, dtype, key, _location, numel = pid
        record = f"{self.prefix}data/{key}"
        try:
            stored = self.archive.getinfo(record).file_size
        except KeyError:
            raise pickle.UnpicklingError(f"storage record {record} is missing") from None
        want = int(numel) * torch.empty(0, dtype=dtype).element_size()
        if stored != want:
            raise pickle.UnpicklingError(f"storage record {record} holds {stored} bytes, its tensor needs {want}")
        return _Storage(dtype, int(numel))


def torch_archive_index(path: Path):
    """What torch.load would return, with every tensor as a meta tensor of the stored shape and dtype.

    Reads only the zip's central directory and data.pkl (kilobytes), so it takes milliseconds on
    an 881 MB model.pt. A file cut short loses the central directory at its end and is reported.
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFilesError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    if magic != b"PK\x03\x04":
        raise ModelFilesError(f"{path.name} is not a zip-format torch archive (it starts with {magic!r}); "
                              "the download is damaged or not the released file")
    try:
        with zipfile.ZipFile(path) as archive:
            pkls = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pkls) != 1:
                raise ModelFilesError(f"{path.name} is a zip file but not a torch archive (no single */data.pkl)")
            prefix = pkls[0][: -len("data.pkl")]
            last = max(archive.infolist(), key=lambda i: i.header_offset)
            if last.header_offset + last.compress_size > path.stat().st_size:
                raise ModelFilesError(f"{path.name} is shorter than its zip directory says: truncated download")
            return _IndexUnpickler(archive.read(pkls[0]), archive, prefix).load()
    except ModelFilesError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ModelFilesError(f"{path.name} is an incomplete zip archive ({exc}): truncated download") from exc
    except (pickle.UnpicklingError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ModelFilesError(f"{path.name}: its tensor index is unusable ({exc})") from exc


# ---- .npy ---------------------------------------------------------------------------------------------------

def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a .npy file, checked against the file's size."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read(f)
            data_start = f.tell()
    except (OSError, ValueError) as exc:
        raise ModelFilesError(f"{path.name} is not a readable .npy file ({exc})") from exc
    need = data_start + int(np.prod(shape)) * dtype.itemsize
    if path.stat().st_size != need:
        raise ModelFilesError(f"{path.name} is {path.stat().st_size} bytes, its header says {need}: "
                              "truncated or damaged download")
    return tuple(shape), dtype


# ---- ONNX graph inputs (protobuf wire format, onnx.proto field numbers) ------------------------------------

_ONNX_TYPES = {1: "float", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
               11: "double", 16: "bfloat16"}
_LARGE = 1 << 20  # length-delimited fields longer than this are skipped by seeking, never read


def _varint(f) -> int | None:
    result = shift = 0
    while True:
        b = f.read(1)
        if not b:
            if shift:
                raise EOFError("ends inside a varint")
            return None
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _walk(f, end: int):
    """Yield (field, wire, value) up to offset `end`: ints for varints, bytes for short length-delimited
    fields, (offset, length) for long ones (skipped by seeking)."""
    while f.tell() < end:
        key = _varint(f)
        if key is None:
            raise EOFError("ends inside a message")
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = _varint(f)
        elif wire in (1, 5):
            value = f.read(8 if wire == 1 else 4)
        elif wire == 2:
            size, start = _varint(f), f.tell()
            if size is None or start + size > end:
                raise EOFError(f"field {number} runs past the end of the file")
            if size > _LARGE:
                f.seek(start + size)
                value = (start, size)
            else:
                value = f.read(size)
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if value is None:
            raise EOFError("ends inside a field")
        yield number, wire, value


def _message(data: bytes):
    return _walk(io.BytesIO(data), len(data))


def _value_info(data: bytes) -> tuple[str, str, list]:
    name, kind, dims = "", "?", []
    for n, w, v in _message(data):
        if n == 1 and w == 2:
            name = v.decode("utf-8", "replace")
        elif n == 2 and w == 2:  # TypeProto
            for n2, w2, v2 in _message(v):
                if n2 == 1 and w2 == 2:  # tensor_type
                    for n3, w3, v3 in _message(v2):
                        if n3 == 1 and w3 == 0:
                            kind = _ONNX_TYPES.get(v3, f"type{v3}")
                        elif n3 == 2 and w3 == 2:  # shape
                            for n4, w4, v4 in _message(v3):
                                if n4 == 1 and w4 == 2:
                                    dims.append(_dim(v4))
    return name, kind, dims


def _dim(data: bytes) -> int | str:
    """A TensorShapeProto.Dimension: its dim_value, or its dim_param name ("?" when neither is set)."""
    for n, w, v in _message(data):
        if n == 1 and w == 0:
            return v
        if n == 2 and w == 2:
            return v.decode("utf-8", "replace")
    return "?"


def _initializer_name(f, start: int, size: int) -> str:
    here = f.tell()
    f.seek(start)
    name = ""
    for n, w, v in _walk(f, start + size):
        if n == 8 and w == 2 and isinstance(v, bytes):
            name = v.decode("utf-8", "replace")
    f.seek(here)
    return name


def onnx_graph_inputs(path: Path) -> list[tuple[str, str, list]]:
    """The graph's real inputs (initializers listed as inputs by old exporters left out) as
    (name, element type, shape), walking the file's protobuf fields and seeking past every weight."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            graph = None
            for n, w, v in _walk(f, size):
                if n == 7 and w == 2:
                    graph = v if isinstance(v, tuple) else (f.tell() - len(v), len(v))
            if graph is None:
                raise ValueError("no graph")
            f.seek(graph[0])
            inputs, initializers = [], set()
            for n, w, v in _walk(f, graph[0] + graph[1]):
                if n == 11 and w == 2:
                    inputs.append(_value_info(v if isinstance(v, bytes) else b""))
                elif n == 5 and w == 2:
                    start, length = v if isinstance(v, tuple) else (f.tell() - len(v), len(v))
                    initializers.add(_initializer_name(f, start, length))
    except EOFError as exc:
        raise ModelFilesError(f"{path.name} {exc}: truncated download") from exc
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise ModelFilesError(f"{path.name} is not an ONNX model ({exc})") from exc
    return [i for i in inputs if i[0] not in initializers]
