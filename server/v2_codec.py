"""Tensors of the Open Inference Protocol on the wire: JSON `data`, and the binary tensor data extension.

The binary extension (what the Triton client sends by default): the body is the JSON request, then the raw bytes
of each input whose `parameters.binary_data_size` says how many, in input order; the header
`Inference-Header-Content-Length` says where the JSON ends. Answers work the same way for the outputs a request
asks as binary (`binary_data_output` on the request, `binary_data` on an output). Numbers are little-endian and
row-major; a BYTES tensor is each element as a 4-byte little-endian length and its bytes.

Everything here is a pure function of bytes and numpy arrays; the router turns TensorError into a 400.
"""
from __future__ import annotations

import json
import math
import struct

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
# The numeric datatypes and their little-endian numpy types (BYTES is handled apart; BF16 has no numpy type).
NUMPY_TYPES = {
    "BOOL": np.dtype("bool"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
MAX_NESTING = 8  # as deep as a shape may be long (server.v2_schemas: at most 8 dimensions)
_LENGTH = struct.Struct("<I")


class TensorError(ValueError):
    """A tensor in a request does not say what it holds, or holds something else."""


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(the JSON part, the binary part) of a request body."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        size = int(header_length)
    except ValueError:
        raise TensorError(f"{HEADER_LENGTH} must be a byte count, got {header_length[:40]!r}") from None
    if not 0 < size <= len(body):
        raise TensorError(f"{HEADER_LENGTH} is {size}; the body has {len(body)} bytes")
    return body[:size], memoryview(body)[size:]


def element_count(shape: list[int]) -> int:
    return math.prod(shape)


def flatten(data: list, what: str) -> list:
    """The scalars of nested lists, row-major; a list inside a list's scalars is an error."""
    out: list = []
    stack = [(iter(data), 1)]
    while stack:
        items, depth = stack[-1]
        for item in items:
            if isinstance(item, list):
                if depth >= MAX_NESTING:
                    raise TensorError(f"{what}: data is nested deeper than {MAX_NESTING}")
                stack.append((iter(item), depth + 1))
                break
            if isinstance(item, dict) or item is None:
                raise TensorError(f"{what}: data holds {type(item).__name__ if item is not None else 'null'}")
            out.append(item)
        else:
            stack.pop()
    return out


def decode_bytes_elements(raw: memoryview | bytes, count: int, what: str) -> list[bytes]:
    """A BYTES tensor's elements from its binary form (4-byte little-endian length, then the bytes, each)."""
    out, offset, end = [], 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise TensorError(f"{what}: binary BYTES data ends inside an element's length")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + size > end:
            raise TensorError(f"{what}: a BYTES element says {size} bytes; {end - offset} are left")
        out.append(bytes(raw[offset:offset + size]))
        offset += size
    if len(out) != count:
        raise TensorError(f"{what}: the shape holds {count} elements; the binary data holds {len(out)}")
    return out


def encode_bytes_elements(items: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def binary_parts(inputs: list[dict], tail: memoryview) -> list[memoryview | None]:
    """Each input's raw bytes (None: its data is in the JSON), cut from the binary part in input order."""
    parts: list[memoryview | None] = []
    offset = 0
    for tensor in inputs:
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            parts.append(None)
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise TensorError(f"input {tensor['name']!r}: binary_data_size must be a byte count")
        if tensor.get("data") is not None:
            raise TensorError(f"input {tensor['name']!r}: both data and binary_data_size")
        if offset + size > len(tail):
            raise TensorError(f"input {tensor['name']!r}: binary_data_size {size} runs past the end of the body")
        parts.append(tail[offset:offset + size])
        offset += size
    if offset != len(tail):
        raise TensorError(f"the body has {len(tail) - offset} bytes after the last binary input")
    return parts


def numeric_tensor(tensor: dict, raw: memoryview | None) -> np.ndarray:
    """A numeric input as an array of its shape (JSON data is range-checked against the datatype)."""
    what, datatype, shape = f"input {tensor['name']!r}", tensor["datatype"], tensor["shape"]
    dtype = NUMPY_TYPES.get(datatype)
    if dtype is None:
        raise TensorError(f"{what}: datatype {datatype} is not a numeric type")
    count = element_count(shape)
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise TensorError(f"{what}: shape {shape} of {datatype} is {count * dtype.itemsize} bytes; "
                              f"binary_data_size is {len(raw)}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if tensor.get("data") is None:
        raise TensorError(f"{what}: no data (neither 'data' nor binary_data_size)")
    values = flatten(tensor["data"], what)
    if len(values) != count:
        raise TensorError(f"{what}: shape {shape} holds {count} elements; data has {len(values)}")
    if dtype.kind in "ui":
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise TensorError(f"{what}: {datatype} data must be integers")
        info = np.iinfo(dtype)
        if values and (min(values) < info.min or max(values) > info.max):
            raise TensorError(f"{what}: {datatype} values must lie in [{info.min}, {info.max}]")
    elif dtype.kind == "b":
        if any(not isinstance(v, bool) for v in values):
            raise TensorError(f"{what}: BOOL data must be true or false")
    elif any(isinstance(v, (bool, str)) for v in values):
        raise TensorError(f"{what}: {datatype} data must be numbers")
    return np.asarray(values, dtype=dtype).reshape(shape)


def bytes_tensor(tensor: dict, raw: memoryview | None) -> list[bytes | str]:
    """A BYTES input's elements, row-major: bytes from binary data, str from JSON (JSON holds only text)."""
    what, shape = f"input {tensor['name']!r}", tensor["shape"]
    count = element_count(shape)
    if raw is not None:
        return decode_bytes_elements(raw, count, what)
    if tensor.get("data") is None:
        raise TensorError(f"{what}: no data (neither 'data' nor binary_data_size)")
    values = flatten(tensor["data"], what)
    if len(values) != count:
        raise TensorError(f"{what}: shape {shape} holds {count} elements; data has {len(values)}")
    if any(not isinstance(v, str) for v in values):
        raise TensorError(f"{what}: BYTES data in JSON must be strings")
    return values


def output_tensor(name: str, datatype: str, shape: list[int], values, *, binary: bool,
                  parameters: dict | None = None) -> tuple[dict, bytes | None]:
    """One output: its JSON object, and its raw bytes when it goes as binary.

    `values`: a numpy array for numeric types, a flat list of bytes for BYTES.
    """
    header: dict = {"name": name, "datatype": datatype, "shape": shape}
    params = dict(parameters or {})
    if datatype == "BYTES":
        raw = encode_bytes_elements(values) if binary else None
        data = None if binary else [v.decode("utf-8", "replace") for v in values]
    else:
        array = np.ascontiguousarray(values, dtype=NUMPY_TYPES[datatype])
        raw = array.tobytes() if binary else None
        data = None if binary else array.reshape(-1).tolist()
    if binary:
        params["binary_data_size"] = len(raw)
    else:
        header["data"] = data
    if params:
        header["parameters"] = params
    return header, raw


def encode_response(header: dict, raws: list[bytes]) -> tuple[bytes, dict[str, str], str]:
    """(body, extra headers, content type): plain JSON, or JSON then the binary outputs in output order."""
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if not raws:
        return text, {}, "application/json"
    return text + b"".join(raws), {HEADER_LENGTH: str(len(text))}, BINARY_CONTENT_TYPE
