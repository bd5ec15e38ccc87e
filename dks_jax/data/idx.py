"""Reader for the IDX file format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number
of dimensions), one big-endian uint32 per dimension, then the values in C order.
"""

from __future__ import annotations

import gzip
import math
import os
import pathlib
import struct
import zlib

import numpy as np

from dks_jax.data import errors

# Type code -> big-endian numpy dtype, from the format's specification.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: pathlib.Path) -> bytes:
    """Reads a file, transparently decompressing it when it is gzipped."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x1f\x8b":  # gzip magic; plain files are read as they are
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise errors.MalformedDatasetError(f"{path}: corrupt gzip stream ({e})") from e


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parses the content of an IDX file.

    Args:
        data: The uncompressed file content.
        source: Name used in error messages.

    Returns:
        The array, converted to native byte order, with the shape in the header.

    Raises:
        MalformedDatasetError: Bad magic number, unknown type code, or a payload
            whose size does not match the header.
    """
    if len(data) < 4:
        raise errors.MalformedDatasetError(
            f"{source}: {len(data)} bytes is too short for an IDX header")
    zero0, zero1, type_code, ndim = struct.unpack(">BBBB", data[:4])
    if zero0 or zero1 or type_code not in _IDX_DTYPES:
        raise errors.MalformedDatasetError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000TTDD with a "
            f"known type code TT in {sorted(hex(c) for c in _IDX_DTYPES)})")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise errors.MalformedDatasetError(f"{source}: truncated IDX header ({ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header_size
    if found != expected:
        raise errors.MalformedDatasetError(
            f"{source}: header promises shape {shape} ({expected} bytes of {dtype}) but the "
            f"payload holds {found} bytes")
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file, gzipped or not.

    Args:
        path: File to read.

    Returns:
        The array stored in the file (native byte order).

    Raises:
        FileNotFoundError: The file does not exist.
        MalformedDatasetError: The content is not valid IDX (or not valid gzip).
    """
    path = pathlib.Path(path)
    return parse_idx(_read_bytes(path), source=str(path))
