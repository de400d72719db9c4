"""Decoding blosc chunks of older stores without handing a frame to c-blosc.

c-blosc trusts the offsets inside a frame (it is not given the frame's length),
so a CRC-correct but forged frame can make it read past its buffer. Stores written
before 2026-11-27 used blosc with lz4, so this reader walks the frame itself
(FORMAT.md 8.2: header, block starts, split streams), checks every size and offset
against the frame's length and the decoded size the array metadata implies, and
decodes each stream with a bounded decoder: LZ4_decompress_safe (numcodecs.lz4,
given the exact output size) or zlib with an output bound. Other blosc compressors,
bitshuffle and delta are refused as unsupported.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from ._errors import CorruptStoreError, UnsupportedFormatError

_HEADER = struct.Struct("<BBBBiii")  # version, versionlz, flags, typesize, nbytes, blocksize, cbytes
_SHUFFLE, _MEMCPYED, _BITSHUFFLE, _DONT_SPLIT, _DELTA_BIT = 0x1, 0x2, 0x4, 0x10, 0x8
_LZ4, _ZLIB = 1, 3
_NAMES = {0: "blosclz", 1: "lz4", 2: "snappy", 3: "zlib", 4: "zstd"}


def decode_blosc(frame: bytes, expected: int, where: object) -> bytes:
    """The decoded bytes of one blosc frame that must decode to exactly `expected` bytes."""
    if len(frame) < _HEADER.size:
        raise CorruptStoreError(f"{where}: blosc frame shorter than its header")
    _version, _vlz, flags, typesize, nbytes, blocksize, cbytes = _HEADER.unpack_from(frame)
    if cbytes != len(frame) or nbytes != expected or typesize < 1:
        raise CorruptStoreError(f"{where}: blosc header (cbytes {cbytes}, nbytes {nbytes}) disagrees with the "
                                f"frame ({len(frame)} bytes) or the array ({expected} bytes)")
    if flags & _MEMCPYED:
        if cbytes != _HEADER.size + nbytes:
            raise CorruptStoreError(f"{where}: stored blosc frame of the wrong length")
        return bytes(frame[_HEADER.size:])
    compressor = flags >> 5
    if compressor not in (_LZ4, _ZLIB) or flags & (_BITSHUFFLE | _DELTA_BIT):
        raise UnsupportedFormatError(f"{where}: blosc with {_NAMES.get(compressor, compressor)}"
                                     f"{' bitshuffle' if flags & _BITSHUFFLE else ''} is not read by this lodestore")
    if nbytes == 0:
        return b""
    if blocksize < 1 or blocksize > max(nbytes, 1) and nbytes > 0:
        raise CorruptStoreError(f"{where}: blosc block size {blocksize} out of range")
    nblocks = -(-nbytes // blocksize)
    starts_end = _HEADER.size + 4 * nblocks
    if starts_end > cbytes:
        raise CorruptStoreError(f"{where}: blosc block table past the end of the frame")
    starts = struct.unpack_from(f"<{nblocks}i", frame, _HEADER.size)
    out = bytearray(nbytes)
    for b, start in enumerate(starts):
        bsize = min(blocksize, nbytes - b * blocksize)
        leftover = bsize < blocksize
        nsplits = typesize if not (flags & _DONT_SPLIT) and not leftover else 1
        if not starts_end <= start <= cbytes or bsize % nsplits:
            raise CorruptStoreError(f"{where}: blosc block {b} starts outside the frame")
        block = _decode_block(frame, start, bsize, nsplits, compressor, where, b)
        if flags & _SHUFFLE and typesize > 1:
            block = _unshuffle(block, typesize)
        out[b * blocksize : b * blocksize + bsize] = block
    return bytes(out)


def _decode_block(frame: bytes, pos: int, bsize: int, nsplits: int, compressor: int, where: object, b: int) -> bytes:
    neblock = bsize // nsplits
    parts = []
    for _ in range(nsplits):
        if pos + 4 > len(frame):
            raise CorruptStoreError(f"{where}: blosc block {b} runs past the end of the frame")
        (csize,) = struct.unpack_from("<i", frame, pos)
        pos += 4
        if csize <= 0 or pos + csize > len(frame):
            raise CorruptStoreError(f"{where}: blosc block {b} stream of {csize} bytes runs past the frame")
        stream = frame[pos : pos + csize]
        pos += csize
        if csize == neblock:  # stored uncompressed
            parts.append(bytes(stream))
            continue
        parts.append(_inflate(stream, neblock, compressor, where, b))
    return b"".join(parts)


def _inflate(stream: bytes, size: int, compressor: int, where: object, b: int) -> bytes:
    try:
        if compressor == _LZ4:
            from numcodecs import lz4  # LZ4_decompress_safe into exactly `size` bytes

            data = lz4.decompress(struct.pack("<I", size) + bytes(stream))
        else:
            d = zlib.decompressobj()
            data = d.decompress(stream, size + 1)
    except Exception as e:  # a stream that does not decode: the codec library's own error type
        raise CorruptStoreError(f"{where}: blosc block {b} does not decode ({e})") from None
    if len(data) != size:
        raise CorruptStoreError(f"{where}: blosc block {b} decodes to {len(data)} bytes, expected {size}")
    return data


def _unshuffle(block: bytes, typesize: int) -> bytes:
    """Inverse of blosc's byte shuffle: byte j of every element was stored together, then the tail as is."""
    n = len(block) // typesize
    head = np.frombuffer(block, dtype=np.uint8, count=n * typesize).reshape(typesize, n).T
    return head.tobytes() + block[n * typesize :]
