"""The tensor types of a GGUF file read from its header alone (metadata values skipped, not built).

`GGUFCheckpoint` opens a file with gguf's reader, which turns every metadata value into numpy
views (a 49k-token vocabulary: ~5 CPU-seconds and ~170 MB); start-up decisions that need only
the tensors' block types (`model_loader.weight_format`) read them here instead. Layout (GGUF v2 /
v3, little-endian): magic, version u32, tensor count u64, key-value count u64, the key-values, then
per tensor its name, dimension count u32, dimensions u64 each, type u32, data offset u64.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from radixlm.model_loader.gguf_reader import _GGUF_MAGIC, _ROPE_FREQS, _hf_tensor_name

# Fixed-size metadata value types (GGUFValueType) -> bytes; 8 is a string, 9 an array.
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def tensor_types(path: str) -> dict[str, int]:
    """HF name -> GGML type id of every tensor of the GGUF file `path` (rope_freqs excluded), as
    `GGUFCheckpoint.quant_types` gives; ValueError naming `path` when it is not GGUF v2 / v3."""
    with open(path, "rb") as f:
        if f.read(4) != _GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file")
        version, tensors, values = struct.unpack("<IQQ", _read(f, 20))
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} (radixlm reads 2 and 3)")
        for _ in range(values):
            _skip_string(f)  # the key
            _skip_value(f, _u32(f))
        types = {}
        for _ in range(tensors):
            name = _read(f, _u64(f)).decode("utf-8")
            f.seek(8 * _u32(f), 1)  # the dimensions
            qtype = _u32(f)
            f.seek(8, 1)  # the data offset
            if name != _ROPE_FREQS:
                types[_hf_tensor_name(name, path)] = qtype
    return types


def _skip_value(f: BinaryIO, kind: int) -> None:
    if kind == _STRING:
        _skip_string(f)
    elif kind == _ARRAY:
        item, count = _u32(f), _u64(f)
        if item in _SIZES:
            f.seek(count * _SIZES[item], 1)
        else:
            for _ in range(count):
                _skip_value(f, item)
    elif kind in _SIZES:
        f.seek(_SIZES[kind], 1)
    else:
        raise ValueError(f"GGUF metadata value of unknown type {kind}")


def _skip_string(f: BinaryIO) -> None:
    f.seek(_u64(f), 1)


def _u32(f: BinaryIO) -> int:
    return struct.unpack("<I", _read(f, 4))[0]


def _u64(f: BinaryIO) -> int:
    return struct.unpack("<Q", _read(f, 8))[0]


def _read(f: BinaryIO, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise ValueError(f"{f.name}: GGUF header ends early")
    return data
