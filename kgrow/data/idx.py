"""Reader for the IDX file format (MNIST, Fashion-MNIST), plain or gzipped.

An IDX file is a 4-byte magic number, the sizes of its dimensions, then the
values in row-major order, all big-endian:

    bytes 0-1   zero
    byte  2     element type (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64)
    byte  3     number of dimensions d
    then d big-endian uint32 sizes, then prod(sizes) values.

The parser checks the magic number, the type code and that the payload holds
exactly the announced number of values, so a truncated download or a wrong
file fails loudly instead of producing garbage images.
"""
import gzip
import os

import numpy as np

#: IDX type code -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_HEADER_BYTES = 4


def parse_idx(buffer, expected_ndim=None, source="<bytes>"):
    """Decodes the bytes of one IDX file into a numpy array.

    Args:
        buffer: The complete (decompressed) file contents.
        expected_ndim: If given, the number of dimensions the file must have
            (3 for an image file, 1 for a label file).
        source: Name used in error messages (usually the file path).

    Returns:
        A read-only numpy array in native byte order with the file's shape.

    Raises:
        ValueError: bad magic number, unknown type code, wrong number of
            dimensions, or a payload that does not match the header.

    Example:
        >>> import struct
        >>> data = bytes([0, 0, 0x08, 2]) + struct.pack(">II", 2, 3) + bytes(range(6))
        >>> parse_idx(data).tolist()
        [[0, 1, 2], [3, 4, 5]]
    """
    buffer = memoryview(buffer)
    if len(buffer) < _HEADER_BYTES:
        raise ValueError(f"{source}: {len(buffer)} bytes is too short for an IDX header.")
    zero0, zero1, type_code, ndim = buffer[0], buffer[1], buffer[2], buffer[3]
    if zero0 != 0 or zero1 != 0:
        raise ValueError(
            f"{source}: bad IDX magic number 0x{bytes(buffer[:4]).hex()} "
            f"(the first two bytes must be zero); is this an IDX file?")
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise ValueError(f"{source}: unknown IDX type code 0x{type_code:02X} (known: {known}).")
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(
            f"{source}: IDX file has {ndim} dimensions, expected {expected_ndim} "
            f"(magic number 0x{bytes(buffer[:4]).hex()}).")
    dims_end = _HEADER_BYTES + 4 * ndim
    if len(buffer) < dims_end:
        raise ValueError(f"{source}: file ends inside the IDX dimension header.")
    shape = tuple(int(d) for d in np.frombuffer(buffer[_HEADER_BYTES:dims_end], dtype=">u4"))
    dtype = IDX_DTYPES[type_code]
    expected_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    payload = len(buffer) - dims_end
    if payload != expected_bytes:
        raise ValueError(
            f"{source}: IDX header announces shape {shape} ({expected_bytes} bytes of "
            f"{dtype.name}) but the file holds {payload} bytes after the header "
            f"(truncated or corrupted file?).")
    values = np.frombuffer(buffer, dtype=dtype, offset=dims_end).reshape(shape)
    if dtype.itemsize > 1:
        values = values.astype(dtype.newbyteorder("="))
    return values


def read_idx(path, expected_ndim=None):
    """Reads an IDX file from disk; a ``.gz`` suffix means gzip-compressed.

    Args:
        path: File path (``str`` or ``os.PathLike``).
        expected_ndim: Forwarded to `parse_idx`.

    Returns:
        The array stored in the file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a valid IDX file (see `parse_idx`) or not
            valid gzip.

    Example:
        >>> labels = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
        >>> labels.shape
        (10000,)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path}")
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (OSError, EOFError) as err:  # gzip raises these for corrupt archives
        raise ValueError(f"{path}: cannot decompress ({err}).") from err
    return parse_idx(data, expected_ndim=expected_ndim, source=path)
