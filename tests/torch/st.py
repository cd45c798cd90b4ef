"""Minimal safetensors reader/writer (struct + json + numpy only).

File layout:
    u64 little-endian N | N bytes of JSON header (space padded) | data region
Header: {name: {"dtype": str, "shape": [..], "data_offsets": [begin, end]},
         "__metadata__": {str: str}}   (offsets relative to the data region)

save(path, tensors, metadata=None, dtypes=None)
    tensors:  dict name -> numpy array (or anything np.asarray accepts)
    dtypes:   optional dict name -> "F32"|"F64"|"F16"|"BF16"|"I64" overriding the
              stored dtype (e.g. keep float32 arrays in memory, store as BF16).
    The file is written to a temporary name and moved into place atomically.
load(path) -> (dict name -> numpy array, metadata dict)
    F16 and BF16 tensors are returned as float32.
"""
import json
import os
import struct

import numpy as np

_NP_DTYPE = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "U8": np.dtype("u1"),
}

_DEFAULT_TAG = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("uint8"): "U8",
}


def f32_to_bf16_bits(a):
    """float32 array -> uint16 bf16 bit patterns (round to nearest, ties to even)."""
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    u = a.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    # keep NaNs NaN (rounding could carry a NaN payload into the infinity pattern)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16).astype(np.uint16)) | np.uint16(0x0040)
    return rounded


def bf16_bits_to_f32(b):
    b = np.ascontiguousarray(np.asarray(b, dtype=np.uint16))
    return (b.astype(np.uint32) << 16).view(np.float32)


def round_bf16(a):
    """Round a float array to bf16 precision, returned as float32."""
    return bf16_bits_to_f32(f32_to_bf16_bits(a))


def round_f16(a):
    return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


def _encode(arr, tag):
    arr = np.asarray(arr)
    if tag == "BF16":
        raw = f32_to_bf16_bits(arr.astype(np.float32))
    else:
        if tag not in _NP_DTYPE:
            raise ValueError("unsupported safetensors dtype %r" % tag)
        raw = arr.astype(_NP_DTYPE[tag])
    return np.ascontiguousarray(raw).tobytes(order="C")


def save(path, tensors, metadata=None, dtypes=None):
    dtypes = dtypes or {}
    header = {}
    blobs = []
    off = 0
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        tag = dtypes.get(name)
        if tag is None:
            if arr.dtype not in _DEFAULT_TAG:
                raise ValueError("%s: no safetensors dtype for numpy %s" % (name, arr.dtype))
            tag = _DEFAULT_TAG[arr.dtype]
        blob = _encode(arr, tag)
        header[name] = {"dtype": tag, "shape": [int(s) for s in arr.shape],
                        "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-len(hjson)) % 8)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(hjson)))
            f.write(hjson)
            for b in blobs:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_raw(path):
    """-> (header dict without __metadata__, metadata, data bytes)."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise ValueError("%s: truncated" % path)
    (n,) = struct.unpack("<Q", buf[:8])
    if 8 + n > len(buf):
        raise ValueError("%s: header length %d past end of file" % (path, n))
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    return header, meta, memoryview(buf)[8 + n:]


def load(path):
    header, meta, data = load_raw(path)
    out = {}
    for name, info in header.items():
        tag = info["dtype"]
        shape = tuple(info["shape"])
        b, e = info["data_offsets"]
        if tag not in _NP_DTYPE:
            raise ValueError("%s: unsupported dtype %s" % (name, tag))
        dt = _NP_DTYPE[tag]
        count = int(np.prod(shape)) if shape else 1
        if e - b != count * dt.itemsize or e > len(data):
            raise ValueError("%s: bad data_offsets %r for %s%r" % (name, [b, e], tag, list(shape)))
        a = np.frombuffer(data[b:e], dtype=dt).reshape(shape)
        if tag == "BF16":
            a = bf16_bits_to_f32(a).reshape(shape)
        elif tag == "F16":
            a = a.astype(np.float32)
        else:
            a = a.astype(dt.newbyteorder("="), copy=True)
        out[name] = a
    return out, meta


def dtypes_of(path):
    header, _, _ = load_raw(path)
    return {k: v["dtype"] for k, v in header.items()}


if __name__ == "__main__":
    import sys
    for p in sys.argv[1:]:
        hdr, meta, _ = load_raw(p)
        print(p, "metadata:", meta)
        for k, v in hdr.items():
            print("  %-50s %-5s %s" % (k, v["dtype"], v["shape"]))
