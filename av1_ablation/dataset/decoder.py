"""Per-4x4 mode info of AV1 intra frames, read with stock libaom through ctypes.

libaom (>= 3.3) exposes the decoder's ``MB_MODE_INFO`` of any 4x4 unit through
the control ``AV1D_GET_MI_INFO``. The struct is not installed with the headers,
so a zeroed 1 KiB buffer receives the copy (the library copies its own
``sizeof``: 176-304 bytes depending on version and build) and only the leading
fields, identical in every libaom 3.x, are read: ``bsize`` (uint8, byte 0),
``partition`` (uint8, byte 1) and ``current_qindex`` (int32, bytes 4-7).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import struct
from pathlib import Path

import numpy as np

from av1_ablation.errors import UserError

INSTALL_HINT = "install it with `apt-get install aom-tools libaom3` (or conda-forge `aom`)"
MIN_LIBAOM = (3, 3, 0)  # first release with AV1D_GET_MI_INFO

# Control ids of aom/aomdx.h; ids are appended, never renumbered.
AOMD_GET_BASE_Q_IDX = 293
AV1D_GET_MI_INFO = 295
# AOM_DECODER_ABI_VERSION = 6 + AOM_CODEC_ABI_VERSION (7 + AOM_IMAGE_ABI_VERSION (9)).
AOM_DECODER_ABI_VERSION = 6 + 7 + 9
_MI_BUFFER_BYTES = 1024
_CTX_BYTES = 256  # aom_codec_ctx_t is 56 bytes on x86-64; room to spare


@functools.lru_cache(maxsize=None)
def load_libaom() -> ctypes.CDLL:
    """The libaom shared library, checked to be recent enough.

    Raises
    ------
    UserError
        If libaom is missing or older than 3.3.
    """
    name = ctypes.util.find_library("aom") or "libaom.so.3"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise UserError(f"libaom shared library not found ({exc}); {INSTALL_HINT}") from None
    lib.aom_codec_version.restype = ctypes.c_int
    check_version(lib.aom_codec_version())
    lib.aom_codec_av1_dx.restype = ctypes.c_void_p
    lib.aom_codec_dec_init_ver.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_int]
    lib.aom_codec_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.aom_codec_get_frame.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.aom_codec_get_frame.restype = ctypes.c_void_p
    lib.aom_codec_destroy.argtypes = [ctypes.c_void_p]
    lib.aom_codec_err_to_string.restype = ctypes.c_char_p
    lib.aom_codec_version_str.restype = ctypes.c_char_p
    # aom_codec_control is variadic: no argtypes, ints and pointers are passed as is.
    return lib


def _version_tuple(packed: int) -> tuple[int, int, int]:
    return (packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF


def check_version(packed: int) -> None:
    """Refuse a libaom older than 3.3, given ``aom_codec_version()`` (major << 16 | minor << 8 | patch)."""
    version = _version_tuple(packed)
    if version < MIN_LIBAOM:
        raise UserError(
            f"libaom {'.'.join(map(str, version))} is too old: the AV1D_GET_MI_INFO decoder "
            f"control needs libaom >= 3.3; {INSTALL_HINT} from a newer release"
        )


def libaom_version() -> str:
    """Version string of the loaded libaom, e.g. ``"3.6.0"``."""
    return ".".join(map(str, _version_tuple(load_libaom().aom_codec_version())))


def read_ivf(path) -> list[bytes]:
    """Frame payloads of an IVF file (32-byte file header, 12-byte frame headers)."""
    data = Path(path).read_bytes()
    if len(data) < 32 or data[:4] != b"DKIF":
        raise ValueError(f"{path} is not an IVF file")
    header_len = struct.unpack_from("<H", data, 6)[0]
    frames, pos = [], header_len
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError(f"{path}: truncated IVF frame header at byte {pos}")
        size = struct.unpack_from("<I", data, pos)[0]
        if pos + 12 + size > len(data):
            raise ValueError(f"{path}: truncated IVF frame at byte {pos}")
        frames.append(data[pos + 12:pos + 12 + size])
        pos += 12 + size
    return frames


def decode_mode_info(ivf_path, mi_rows: int, mi_cols: int):
    """Decode an intra-only IVF stream and yield each frame's per-4x4 mode info.

    Parameters
    ----------
    ivf_path : path-like
        AV1 stream in IVF.
    mi_rows, mi_cols : int
        Frame size in 4x4 units.

    Yields
    ------
    bsize, partition : ndarray of shape (mi_rows, mi_cols), uint8
    qindex : ndarray of shape (mi_rows, mi_cols), int32
        ``current_qindex`` of each unit.
    base_qindex : int
        The frame's base qindex (``AOMD_GET_BASE_Q_IDX``).
    """
    lib = load_libaom()
    ctx = ctypes.create_string_buffer(_CTX_BYTES)
    err = lib.aom_codec_dec_init_ver(ctx, lib.aom_codec_av1_dx(), None, 0, AOM_DECODER_ABI_VERSION)
    _check(lib, err, "aom_codec_dec_init_ver")
    mi = ctypes.create_string_buffer(_MI_BUFFER_BYTES)  # zero-filled
    base_q = ctypes.c_int(-1)
    control = lib.aom_codec_control
    unpack = struct.Struct("<BBxxi").unpack_from
    try:
        for n, payload in enumerate(read_ivf(ivf_path)):
            _check(lib, lib.aom_codec_decode(ctx, payload, len(payload), None), f"decoding frame {n}")
            it = ctypes.c_void_p(None)
            if not lib.aom_codec_get_frame(ctx, ctypes.byref(it)):
                raise RuntimeError(f"libaom returned no picture for frame {n} of {ivf_path}")
            _check(lib, control(ctx, AOMD_GET_BASE_Q_IDX, ctypes.byref(base_q)), "AOMD_GET_BASE_Q_IDX")
            info = np.empty((mi_rows, mi_cols, 3), dtype=np.int32)
            for r in range(mi_rows):
                for c in range(mi_cols):
                    if control(ctx, AV1D_GET_MI_INFO, r, c, mi):
                        _check(lib, control(ctx, AV1D_GET_MI_INFO, r, c, mi), f"AV1D_GET_MI_INFO({r},{c})")
                    info[r, c] = unpack(mi)
            yield (info[..., 0].astype(np.uint8), info[..., 1].astype(np.uint8),
                   info[..., 2], int(base_q.value))
    finally:
        lib.aom_codec_destroy(ctx)


def _check(lib, err: int, what: str) -> None:
    if err:
        raise RuntimeError(f"libaom {what} failed: {lib.aom_codec_err_to_string(err).decode()}")
