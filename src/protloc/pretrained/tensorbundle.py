"""A reader for TensorFlow "TensorBundle" (V2) checkpoints, without TensorFlow.

A checkpoint ``PREFIX`` is two kinds of file:

- ``PREFIX.index``: a LevelDB-style sorted string table (SSTable). Its 48-byte footer holds the
  block handles (varint64 offset and size) of the metaindex and index blocks and the magic number
  0xdb4775248b80fb57. The index block maps the last key of each data block to that block's handle.
  A block is a run of prefix-compressed entries (varint32 shared key length, unshared length,
  value length, key suffix, value) followed by a uint32 restart array and its length; on disk
  each block is followed by a 1-byte compression type and a masked crc32c of block + type byte.
  In the data blocks, the entry with the empty key holds a ``BundleHeaderProto`` and every other
  entry maps a variable name to a ``BundleEntryProto`` (dtype, shape, shard, offset, size, crc32c).
- ``PREFIX.data-SSSSS-of-NNNNN``: the raw little-endian tensor bytes, found by (shard, offset, size);
  each tensor's masked crc32c is checked on reading.

The protobuf messages are decoded by hand from the wire format (varints, length-delimited fields,
fixed32), which keeps protobuf and TensorFlow out of protloc's dependencies. Anything missing,
truncated or corrupt raises ``ProtlocError`` naming the file and the problem.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import crc32c as _crc32c
import numpy as np

from protloc.errors import ProtlocError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type (1 byte) + masked crc32c (4 bytes)
COMPRESSION_NONE = 0
COMPRESSION_SNAPPY = 1
CRC_MASK_DELTA = 0xA282EAD8

# tensorflow/core/framework/types.proto -> numpy (little-endian). Strings and quantised types are not
# numeric arrays with a fixed item size and are not needed for weights, so they are refused.
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    17: np.dtype("<u2"),  # DT_UINT16
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
               9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 19: "float16", 22: "uint32", 23: "uint64"}


def mask_crc(crc: int) -> int:
    """LevelDB/TensorFlow masked crc32c: rotate right by 15 bits, add a constant (mod 2^32)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + CRC_MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data: bytes | memoryview) -> int:
    return mask_crc(_crc32c.crc32c(data))


# --------------------------------------------------------------------------------------------------
# protobuf wire format
# --------------------------------------------------------------------------------------------------


class _Truncated(Exception):
    """Internal: a varint or field ran past the end of its buffer."""


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise _Truncated
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: bytes | memoryview):
    """Yield (field number, wire type, value) of a protobuf message; value is int or bytes."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:  # varint
            value, pos = _varint(buf, pos)
        elif wire_type == 1:  # fixed64
            if pos + 8 > len(buf):
                raise _Truncated
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire_type == 2:  # length-delimited
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise _Truncated
            value = bytes(buf[pos:pos + length])
            pos += length
        elif wire_type == 5:  # fixed32
            if pos + 4 > len(buf):
                raise _Truncated
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        yield number, wire_type, value


@dataclass(frozen=True)
class BundleHeader:
    num_shards: int
    little_endian: bool
    producer_version: int


@dataclass(frozen=True)
class BundleEntry:
    name: str
    dtype: int  # TensorFlow DataType enum
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored
    sliced: bool  # a partitioned variable (stored as slices): not supported

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, f"dtype {self.dtype}")


def _parse_header(value: bytes) -> BundleHeader:
    num_shards, endianness, producer = 1, 0, 0
    for number, _, field in _fields(value):
        if number == 1:
            num_shards = field
        elif number == 2:
            endianness = field
        elif number == 3 and isinstance(field, bytes):
            for sub_number, _, sub_field in _fields(field):
                if sub_number == 1:
                    producer = sub_field
    return BundleHeader(num_shards=num_shards, little_endian=endianness == 0, producer_version=producer)


def _parse_shape(value: bytes) -> tuple[int, ...]:
    dims: list[int] = []
    for number, _, field in _fields(value):
        if number == 2:  # repeated Dim dim
            size = 0
            for dim_number, _, dim_field in _fields(field):
                if dim_number == 1:
                    size = dim_field
            dims.append(size)
        elif number == 3 and field:  # unknown_rank
            raise ValueError("tensor of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, value: bytes) -> BundleEntry:
    dtype, shape, shard_id, offset, size, crc, sliced = 0, (), 0, 0, 0, 0, False
    for number, _, field in _fields(value):
        if number == 1:
            dtype = field
        elif number == 2:
            shape = _parse_shape(field)
        elif number == 3:
            shard_id = field
        elif number == 4:
            offset = field
        elif number == 5:
            size = field
        elif number == 6:
            crc = field
        elif number == 7:
            sliced = True
    return BundleEntry(name, dtype, shape, shard_id, offset, size, crc, sliced)


# --------------------------------------------------------------------------------------------------
# sorted string table (.index)
# --------------------------------------------------------------------------------------------------


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Decode one uncompressed block into its (key, value) pairs."""
    if len(block) < 4:
        raise ValueError("block shorter than its restart count")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise ValueError(f"block claims {num_restarts} restart points, more than fit")
    entries: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_length, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + value_length > limit:
            raise ValueError("block entry runs past the block")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + value_length]))
        pos += value_length
    return entries


def _decode_handle(buf: bytes, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return (offset, size), pos


class TensorBundle:
    """The variables of a TensorBundle checkpoint: ``entries`` (name -> BundleEntry) and ``read``."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = Path(prefix)
        self.index_path = Path(f"{self.prefix}.index")
        if not self.index_path.is_file():
            raise ProtlocError(f"checkpoint index not found: {self.index_path}")
        self._index = self.index_path.read_bytes()
        self.header, self.entries = self._read_index()
        self.data_paths = [
            Path(f"{self.prefix}.data-{shard:05d}-of-{self.header.num_shards:05d}")
            for shard in range(self.header.num_shards)
        ]
        for path in self.data_paths:
            if not path.is_file():
                raise ProtlocError(f"checkpoint data file not found: {path}")

    # -- index ------------------------------------------------------------------------------------

    def _fail(self, problem: str) -> ProtlocError:
        return ProtlocError(f"{self.index_path}: {problem}")

    def _read_block(self, handle: tuple[int, int], what: str) -> bytes:
        offset, size = handle
        end = offset + size + BLOCK_TRAILER_SIZE
        if end > len(self._index) - FOOTER_SIZE:
            raise self._fail(f"truncated or corrupt ({what} block at {offset}+{size} lies past the data)")
        block = self._index[offset:offset + size]
        compression = self._index[offset + size]
        stored_crc = struct.unpack_from("<I", self._index, offset + size + 1)[0]
        actual_crc = mask_crc(_crc32c.crc32c(self._index[offset:offset + size + 1]))
        if stored_crc != actual_crc:
            raise self._fail(f"corrupt {what} block at byte {offset} (crc32c mismatch)")
        if compression == COMPRESSION_SNAPPY:
            raise self._fail(f"{what} block is Snappy-compressed, which this reader does not support "
                             "(re-save the checkpoint without compression)")
        if compression != COMPRESSION_NONE:
            raise self._fail(f"{what} block has unknown compression type {compression}")
        return block

    def _read_index(self) -> tuple[BundleHeader, dict[str, BundleEntry]]:
        data = self._index
        if len(data) < FOOTER_SIZE:
            raise self._fail(f"truncated ({len(data)} bytes, shorter than the {FOOTER_SIZE}-byte table footer)")
        footer = data[-FOOTER_SIZE:]
        magic = struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)[0]
        if magic != TABLE_MAGIC:
            raise self._fail("not a TensorFlow checkpoint index or truncated (no sorted-table magic number at its end)")
        try:
            _metaindex, pos = _decode_handle(footer, 0)
            index_handle, _ = _decode_handle(footer, pos)
            index_entries = _block_entries(self._read_block(index_handle, "index"))
            header: BundleHeader | None = None
            entries: dict[str, BundleEntry] = {}
            for _last_key, handle_bytes in index_entries:
                handle, _ = _decode_handle(handle_bytes, 0)
                for key, value in _block_entries(self._read_block(handle, "data")):
                    if key == b"":
                        header = _parse_header(value)
                    else:
                        name = key.decode("utf-8")
                        entries[name] = _parse_entry(name, value)
        except ProtlocError:
            raise
        except (_Truncated, ValueError, UnicodeDecodeError) as exc:
            raise self._fail(f"corrupt sorted table ({exc or 'record runs past its end'})") from None
        if header is None:
            raise self._fail("no bundle header (empty key) in the table")
        if not header.little_endian:
            raise self._fail("big-endian checkpoint, which this reader does not support")
        if header.num_shards < 1:
            raise self._fail(f"invalid shard count {header.num_shards}")
        return header, entries

    # -- tensors ----------------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return sorted(self.entries)

    def read(self, name: str) -> np.ndarray:
        """One variable as a numpy array (native byte order), after checking its crc32c."""
        try:
            entry = self.entries[name]
        except KeyError:
            raise ProtlocError(f"checkpoint {self.prefix} has no variable {name!r}") from None
        if entry.sliced:
            raise ProtlocError(f"variable {name!r} in {self.prefix} is partitioned into slices (not supported)")
        dtype = DTYPES.get(entry.dtype)
        if dtype is None:
            raise ProtlocError(f"variable {name!r} in {self.prefix} has unsupported type {entry.dtype_name}")
        count = int(np.prod(entry.shape, dtype=np.int64))
        if count * dtype.itemsize != entry.size:
            raise self._fail(f"variable {name!r}: {entry.size} bytes do not hold shape {list(entry.shape)} "
                             f"of {entry.dtype_name}")
        if not 0 <= entry.shard_id < len(self.data_paths):
            raise self._fail(f"variable {name!r} names shard {entry.shard_id} of {len(self.data_paths)}")
        path = self.data_paths[entry.shard_id]
        with open(path, "rb") as handle:
            handle.seek(entry.offset)
            raw = handle.read(entry.size)
        if len(raw) != entry.size:
            raise ProtlocError(f"{path}: truncated (variable {name!r} needs bytes {entry.offset}.."
                               f"{entry.offset + entry.size}, the file has {path.stat().st_size})")
        if masked_crc32c(raw) != entry.crc32c:
            raise ProtlocError(f"{path}: corrupt data for variable {name!r} (crc32c mismatch)")
        return np.frombuffer(raw, dtype=dtype).reshape(entry.shape).astype(dtype.newbyteorder("="))

    def read_all(self) -> dict[str, np.ndarray]:
        return {name: self.read(name) for name in self.names()}


def find_checkpoint_prefix(path: str | Path) -> Path:
    """The checkpoint prefix for a folder holding exactly one ``*.index``, a prefix, or an index/data file."""
    path = Path(path)
    if path.is_dir():
        indexes = sorted(path.glob("*.index"))
        if not indexes:
            raise ProtlocError(f"no TensorFlow checkpoint (*.index) in {path}")
        if len(indexes) > 1:
            names = ", ".join(p.name for p in indexes)
            raise ProtlocError(f"{path} holds several checkpoints ({names}); name one as FOLDER/PREFIX")
        return indexes[0].with_suffix("")
    if path.suffix == ".index":
        return path.with_suffix("")
    if ".data-" in path.name:
        return path.with_name(path.name.split(".data-")[0])
    if Path(f"{path}.index").is_file():
        return path
    raise ProtlocError(f"no TensorFlow checkpoint at {path} (expected a folder or PREFIX with PREFIX.index)")


def read_tensor_bundle(path: str | Path) -> TensorBundle:
    """Open a TensorBundle checkpoint from its folder, prefix, or one of its files."""
    return TensorBundle(find_checkpoint_prefix(path))
