"""IDX parsing and reading."""
import gzip
import struct

import numpy as np
import pytest

from kgrow.data import parse_idx, read_idx


def idx_bytes(array, type_code):
    """Encodes an array as IDX by hand (header + big-endian payload)."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype[type_code]).tobytes()


def test_parses_uint8_images_in_row_major_order():
    data = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 2, 2, 3) + bytes(range(12))
    out = parse_idx(data, expected_ndim=3)
    assert out.shape == (2, 2, 3)
    assert out.dtype == np.uint8
    assert out[1, 0].tolist() == [6, 7, 8]


def test_multibyte_values_are_big_endian():
    values = np.array([1, 256, -2, 70000], dtype=np.int64)
    data = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 4) + struct.pack(">4i", *values)
    out = parse_idx(data)
    assert out.tolist() == [1, 256, -2, 70000]
    assert out.dtype == np.int32 and out.dtype.isnative


def test_float_type_roundtrip():
    values = np.array([[0.5, -1.25], [3.0, 1e-3]], dtype=np.float32)
    out = parse_idx(idx_bytes(values, 0x0D))
    np.testing.assert_array_equal(out, values)


def test_bad_magic_is_rejected():
    data = bytearray(idx_bytes(np.zeros(3, np.uint8), 0x08))
    data[0] = 0x1F  # e.g. a still-compressed gzip stream
    with pytest.raises(ValueError, match="magic number"):
        parse_idx(bytes(data))


def test_unknown_type_code_is_rejected():
    data = bytes([0, 0, 0x07, 1]) + struct.pack(">I", 1) + b"\x00"
    with pytest.raises(ValueError, match="unknown IDX type code 0x07"):
        parse_idx(data)


def test_wrong_number_of_dimensions_is_rejected():
    with pytest.raises(ValueError, match="has 1 dimensions, expected 3"):
        parse_idx(idx_bytes(np.zeros(5, np.uint8), 0x08), expected_ndim=3)


def test_truncated_payload_is_rejected():
    data = idx_bytes(np.zeros((4, 2, 2), np.uint8), 0x08)[:-3]
    with pytest.raises(ValueError, match="truncated or corrupted"):
        parse_idx(data)


def test_short_dimension_header_is_rejected():
    with pytest.raises(ValueError, match="ends inside the IDX dimension header"):
        parse_idx(bytes([0, 0, 0x08, 3, 0, 0, 0, 1]))


def test_read_idx_plain_and_gzip(tmp_path):
    values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    plain = tmp_path / "a-idx3-ubyte"
    plain.write_bytes(idx_bytes(values, 0x08))
    packed = tmp_path / "b-idx3-ubyte.gz"
    packed.write_bytes(gzip.compress(idx_bytes(values, 0x08)))
    np.testing.assert_array_equal(read_idx(plain, expected_ndim=3), values)
    np.testing.assert_array_equal(read_idx(packed, expected_ndim=3), values)


def test_read_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="IDX file not found"):
        read_idx(tmp_path / "missing.gz")
    broken = tmp_path / "broken.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot decompress"):
        read_idx(broken)
