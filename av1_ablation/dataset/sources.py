"""Reading sources (bundled photos, packaged photos, Y4M, raw YUV, PNG/JPEG, video
clips) into 10-bit luma frames.

Every source becomes a stack of 10-bit luma frames (uint16, 0..1023), centre
cropped to a multiple of 64 so that superblocks, and therefore 16x16 nodes,
never straddle the picture border (border nodes have forced partitions).
8-bit pictures are up-shifted (``<< 2``); colour pictures are reduced to luma
with the BT.601 weights (0.299, 0.587, 0.114), full range. Compressed video
clips (``.mp4`` etc., decoded with PyAV) give their decoded Y plane as is.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from av1_ablation.dataset import packaged
from av1_ablation.errors import UserError

# The natural photographs bundled with scikit-image (``skimage.data``): they
# ship with the library, so the default data set builds offline, and they span
# faces, objects, textures (brick, grass, gravel), astronomy, microscopy and
# text, i.e. smooth areas as well as fine detail.
EMBEDDED: dict[str, str] = {
    "astronaut": "astronaut",
    "camera": "camera",
    "coffee": "coffee",
    "chelsea": "chelsea",
    "rocket": "rocket",
    "hubble_deep_field": "hubble_deep_field",
    "motorcycle_left": "stereo_motorcycle",
    "retina": "retina",
    "immunohistochemistry": "immunohistochemistry",
    "brick": "brick",
    "grass": "grass",
    "gravel": "gravel",
    "coins": "coins",
    "moon": "moon",
    "page": "page",
    "text": "text",
    "cell": "cell",
}
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")
SOURCE_KINDS = ("embedded", "embedded:NAME", "extended", "extended:NAME", ".y4m", ".yuv", ".png", ".jpg",
                *VIDEO_SUFFIXES, "legacy-raw:DIR", "legacy-pt:FILE")
MIN_SIDE = 64
_PICTURE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
_Y4M_CHROMA = {  # colour space tag -> (bit depth, chroma samples per luma sample)
    "420": (8, 0.5), "420jpeg": (8, 0.5), "420paldv": (8, 0.5), "420mpeg2": (8, 0.5),
    "422": (8, 1.0), "444": (8, 2.0), "mono": (8, 0.0),
    "420p10": (10, 0.5), "422p10": (10, 1.0), "444p10": (10, 2.0), "mono10": (10, 0.0),
}


@dataclass(frozen=True)
class Source:
    """One source of pictures, as requested on the command line."""

    kind: str  # embedded | y4m | yuv | image | video | legacy-raw | legacy-pt
    name: str
    spec: str  # canonical spec (absolute path for files)
    path: Path | None = None
    # a packaged picture or clip brings its own treatment (see dataset.packaged)
    origin: str | None = None
    downscale: int = 1
    frame_step: int | None = None  # overrides --frame-step; --frames/--max-frames do not apply


@dataclass
class Frames:
    """Selected frames of a source, ready to encode."""

    luma: np.ndarray  # (F, H, W) uint16, 10-bit, cropped to a multiple of 64
    indices: list[int]  # frame numbers in the source
    size: tuple[int, int]  # (height, width) of the source before cropping
    sha256: str  # of the file, or of the decoded pixels for embedded photos
    info: dict = field(default_factory=dict)


def parse_sources(specs: list[str]) -> list[Source]:
    """Expand and check ``--source`` values (``embedded`` expands to all photos, ``extended``
    to those and every packaged picture and clip)."""
    out: list[Source] = []
    for spec in specs:
        if spec in ("embedded", "extended"):
            out += [Source("embedded", n, f"embedded:{n}") for n in EMBEDDED]
            if spec == "extended":
                out += [_packaged_source(n) for n in packaged.PACKAGED]
        elif spec.startswith("extended:"):
            out.append(_packaged_source(spec.split(":", 1)[1]))
        elif spec.startswith("embedded:"):
            name = spec.split(":", 1)[1]
            if name not in EMBEDDED:
                raise UserError(f"unknown embedded photo {name!r}; choose one of {', '.join(EMBEDDED)}")
            out.append(Source("embedded", name, spec))
        elif spec.startswith(("legacy-raw:", "legacy-pt:")):
            kind, path = spec.split(":", 1)
            p = Path(path).expanduser().resolve()
            if not p.exists():
                raise UserError(f"{kind} source {path!r} does not exist")
            out.append(Source(kind, p.name, f"{kind}:{p}", p))
        else:
            p = Path(spec).expanduser()
            suffix = p.suffix.lower()
            kind = {".y4m": "y4m", ".yuv": "yuv", ".png": "image", ".jpg": "image", ".jpeg": "image",
                    **{v: "video" for v in VIDEO_SUFFIXES}}.get(suffix)
            if kind is None:
                raise UserError(
                    f"unknown source kind {spec!r}; use one of: {', '.join(SOURCE_KINDS)}")
            if not p.is_file():
                raise UserError(f"source file {spec!r} does not exist or is not readable")
            out.append(Source(kind, p.stem, str(p.resolve()), p.resolve()))
    names = [s.spec for s in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"source(s) given more than once: {', '.join(dupes)}")
    return out


def _packaged_source(name: str) -> Source:
    path, item = packaged.locate(name)  # refuses an unknown name or a missing package
    digest = file_sha256(path)
    if digest != item.sha256:
        raise UserError(f"extended:{name}: {path} has sha256 {digest[:16]}..., not the pinned "
                        f"{item.sha256[:16]}...: the {item.origin} package changed this picture, so the "
                        "data set would not be the documented one; install the listed package version "
                        "or build from explicit file paths instead")
    kind = "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"
    return Source(kind, name, f"extended:{name}", path, origin=item.origin, downscale=item.downscale,
                  frame_step=item.frame_step if kind == "video" else None)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _to_luma8(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[-1] <= 2:  # grey, or grey + alpha
        img = img[..., 0]
    if img.ndim == 3:
        rgb = img[..., :3].astype(np.float64)
        img = np.rint(rgb @ np.array([0.299, 0.587, 0.114]))
    if img.dtype != np.uint8 and img.max() > 255:
        raise UserError("only 8-bit PNG/JPEG pictures are supported; convert 16-bit pictures to Y4M C420p10")
    return img.astype(np.uint16)


def _select(n_frames: int, frame_step: int, frames, max_frames) -> list[int]:
    if frames is not None:
        bad = [f for f in frames if not 0 <= f < n_frames]
        if bad:
            raise UserError(f"--frames {bad} out of range: the source has {n_frames} frames (0..{n_frames - 1})")
        chosen = list(frames)
    else:
        chosen = list(range(0, n_frames, frame_step))
    return chosen[:max_frames] if max_frames else chosen


def read_frames(src: Source, *, width=None, height=None, frame_step=1, frames=None,
                max_frames=None, crop=None) -> Frames:
    """Read the selected frames of ``src`` as cropped 10-bit luma.

    Parameters
    ----------
    src : Source
        From :func:`parse_sources` (not a legacy import).
    width, height : int, optional
        Picture size of a raw ``.yuv`` file (else parsed from a ``WxH`` in its name).
    frame_step, frames, max_frames
        Frame selection for videos: every ``frame_step``-th frame, or the
        listed frame numbers, then at most ``max_frames`` of them. A packaged
        clip uses its own fixed selection instead.
    crop : int, optional
        Centre crop to ``crop`` x ``crop`` first (then to a multiple of 64),
        after a packaged JPEG's downscaling.

    Raises
    ------
    UserError
        Unreadable or truncated file, a raw YUV size that is not a whole number
        of frames, or a picture smaller than 64x64.
    """
    if src.frame_step is not None:
        frame_step, frames, max_frames = src.frame_step, None, None
    if src.kind == "embedded":
        import skimage.data
        img = getattr(skimage.data, EMBEDDED[src.name])()
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
            img = img[0]
        luma, indices, digest = _to_luma8(np.asarray(img))[None] << 2, [0], _array_sha256(img)
        info = {"luma": "BT.601 full range, 8-bit << 2"}
    elif src.kind == "image":
        img = _read_picture(src.path)
        luma, indices, digest = _to_luma8(np.asarray(img))[None] << 2, [0], file_sha256(src.path)
        info = {"luma": "BT.601 full range, 8-bit << 2"}
    elif src.kind == "y4m":
        luma, indices, info = _read_y4m(src.path, frame_step, frames, max_frames)
        digest = file_sha256(src.path)
    elif src.kind == "yuv":
        luma, indices, info = _read_yuv(src.path, width, height, frame_step, frames, max_frames)
        digest = file_sha256(src.path)
    elif src.kind == "video":
        luma, indices, info = _read_video(src.path, frame_step, frames, max_frames)
        digest = file_sha256(src.path)
    else:
        raise ValueError(f"cannot read frames of a {src.kind} source")
    size = tuple(int(s) for s in luma.shape[1:])
    if src.origin:
        info = {**info, "origin": src.origin}
    if src.downscale > 1:
        luma = downscale(luma, src.downscale)
        info = {**info, "downscale": src.downscale}
    if min(luma.shape[1:]) < MIN_SIDE:
        h, w = luma.shape[1:]
        raise UserError(f"{src.spec}: picture {w}x{h}" + (f" (downscaled by {src.downscale})" if src.downscale > 1
                                                         else "") + " is smaller than 64x64; use larger pictures")
    luma = _crop(luma, crop)
    return Frames(np.ascontiguousarray(luma, dtype=np.uint16), indices, size, digest, info)


def _read_picture(path: Path) -> np.ndarray:
    """A PNG or JPEG picture; anything else, whatever its name, is refused by its content."""
    from skimage import io

    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise UserError(f"cannot read picture {path}: {exc.strerror}; check the path and its "
                        "permissions") from exc
    kind = next((k for sig, k in _PICTURE_SIGNATURES.items() if head.startswith(sig)), None)
    if kind is None:
        raise UserError(f"{path} is not a PNG or JPEG file (its content does not start like one, "
                        "whatever its name says); convert it to PNG, JPEG or Y4M")
    try:
        return io.imread(path)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        # the decoder's own text suggests installing imageio plugins, which would not help
        raise UserError(f"cannot decode {path}: a damaged or truncated {kind} file "
                        f"({type(exc).__name__}); re-export it") from exc


def downscale(luma: np.ndarray, factor: int) -> np.ndarray:
    """``factor`` x ``factor`` mean of 10-bit luma frames (the picture cropped to a multiple
    of ``factor`` first). For 8-bit pictures ``<< 2`` and ``factor=2`` the mean is the sum of
    the four 8-bit samples: exact, no rounding."""
    n, h, w = luma.shape
    h, w = h - h % factor, w - w % factor
    blocks = luma[:, :h, :w].reshape(n, h // factor, factor, w // factor, factor).astype(np.float64)
    return np.rint(blocks.mean(axis=(2, 4))).astype(np.uint16)


def _read_video(path: Path, frame_step, frames, max_frames):
    """The decoded Y plane of every selected frame of a compressed clip (PyAV)."""
    try:
        import av
    except ImportError:
        raise UserError(f"{path}: reading compressed video needs PyAV: `pip install av` (or "
                        "`make extended-packages`), or convert the clip to Y4M") from None
    # only the frames that can be selected are kept (a long clip need not fit in memory)
    listed = set(frames) if frames is not None else None
    kept, n, size = {}, 0, None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path} has no video stream; pass a video clip")
            for n, frame in enumerate(container.decode(video=0)):
                if frame.format.name not in ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p",
                                             "yuvj444p", "gray"):
                    raise UserError(f"{path}: {frame.format.name} video is not supported; convert it "
                                    "to 8-bit 4:2:0 or to Y4M")
                if size not in (None, (frame.height, frame.width)):
                    raise UserError(f"{path}: the frame size changes at frame {n} ({size[1]}x{size[0]} to "
                                    f"{frame.width}x{frame.height}); convert the clip to one size")
                size = (frame.height, frame.width)
                wanted = n in listed if listed is not None else (
                    n % frame_step == 0 and not (max_frames and len(kept) >= max_frames))
                if wanted:
                    # the Y plane itself: a conversion to "gray" would stretch limited-range luma
                    y = frame.planes[0]
                    kept[n] = np.frombuffer(y, np.uint8).reshape(frame.height, y.line_size)[:, :frame.width].copy()
            total = n + 1 if size else 0
    except av.FFmpegError as exc:
        raise UserError(f"cannot decode {path}: {exc}; re-export the clip or convert it to Y4M") from exc
    if not total:
        raise UserError(f"{path}: the clip has no video frames")
    chosen = _select(total, frame_step, frames, max_frames)
    luma = np.stack([kept[k] for k in chosen]).astype(np.uint16) << 2
    return luma, chosen, {"format": "compressed video, decoded Y plane << 2", "frames_in_source": total}


def _array_sha256(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()


def _crop(luma: np.ndarray, crop) -> np.ndarray:
    h, w = luma.shape[1:]
    if crop:
        h, w = min(h, crop), min(w, crop)
    h, w = h - h % 64, w - w % 64
    top, left = (luma.shape[1] - h) // 2, (luma.shape[2] - w) // 2
    return luma[:, top:top + h, left:left + w]


def _read_y4m(path: Path, frame_step, frames, max_frames):
    with open(path, "rb") as f:
        header = f.readline()
        if not header.startswith(b"YUV4MPEG2 ") or not header.endswith(b"\n"):
            raise UserError(f"{path} is not a Y4M file (no YUV4MPEG2 header); re-export it as Y4M")
        params = {t[:1]: t[1:] for t in header.decode("ascii", "replace").split()[1:]}
        try:
            w, h = int(params["W"]), int(params["H"])
        except (KeyError, ValueError):
            raise UserError(f"{path}: Y4M header lacks a valid W/H") from None
        tag = params.get("C", "420jpeg")
        if tag not in _Y4M_CHROMA:
            raise UserError(f"{path}: unsupported Y4M colour space C{tag}; use 4:2:0/4:2:2/4:4:4, 8 or 10 bit")
        depth, chroma = _Y4M_CHROMA[tag]
        bps = 2 if depth > 8 else 1
        frame_bytes = int(w * h * (1 + chroma)) * bps
        # Frame headers may carry parameters, so walk the file frame by frame.
        offsets = []
        while True:
            line = f.readline()
            if not line:
                break
            if not line.startswith(b"FRAME"):
                raise UserError(f"{path}: corrupt Y4M, expected FRAME at frame {len(offsets)}")
            start = f.tell()
            f.seek(0, 2)
            if f.tell() - start < frame_bytes:
                raise UserError(f"{path}: truncated Y4M, frame {len(offsets)} is incomplete; re-export the file")
            offsets.append(start)
            f.seek(start + frame_bytes)
        if not offsets:
            raise UserError(f"{path}: Y4M file has no frames")
        chosen = _select(len(offsets), frame_step, frames, max_frames)
        luma = np.empty((len(chosen), h, w), dtype=np.uint16)
        for i, n in enumerate(chosen):
            f.seek(offsets[n])
            plane = np.frombuffer(f.read(w * h * bps), dtype="<u2" if bps == 2 else np.uint8)
            luma[i] = plane.reshape(h, w)
    if depth == 8:
        luma <<= 2
    elif luma.max(initial=0) > 1023:
        raise UserError(f"{path}: samples above 1023 in a 10-bit Y4M; the file is not 10-bit little-endian")
    return luma, chosen, {"format": f"y4m C{tag}", "frames_in_source": len(offsets)}


def _read_yuv(path: Path, width, height, frame_step, frames, max_frames):
    if not (width and height):
        m = re.search(r"(\d{2,5})x(\d{2,5})", path.name)
        if not m:
            raise UserError(f"{path}: raw YUV needs --width and --height (or WxH in the file name)")
        width, height = int(m.group(1)), int(m.group(2))
    # UVG names its 8-bit files *_8bit_*; everything else is read as 10-bit LE 4:2:0.
    depth = 8 if re.search(r"(^|[_\-.])8bit", path.name, re.I) else 10
    bps = 2 if depth == 10 else 1
    frame_bytes = width * height * 3 // 2 * bps
    size = path.stat().st_size
    if size == 0 or size % frame_bytes:
        raise UserError(
            f"{path}: size {size} bytes is not a whole number of {width}x{height} {depth}-bit 4:2:0 "
            f"frames ({frame_bytes} bytes each); check --width/--height")
    chosen = _select(size // frame_bytes, frame_step, frames, max_frames)
    mm = np.memmap(path, dtype="<u2" if bps == 2 else np.uint8, mode="r")
    per_frame = frame_bytes // bps
    luma = np.stack([np.asarray(mm[n * per_frame:n * per_frame + width * height]).reshape(height, width)
                     for n in chosen]).astype(np.uint16)
    del mm
    if depth == 8:
        luma <<= 2
    elif luma.max(initial=0) > 1023:
        raise UserError(f"{path}: samples above 1023; the file is not 10-bit little-endian (name 8-bit files *_8bit_*)")
    return luma, chosen, {"format": f"yuv420p{'10le' if depth == 10 else ''}", "frames_in_source": size // frame_bytes}


def write_y4m(path, luma: np.ndarray) -> None:
    """Write 10-bit luma frames as Y4M C420p10 with neutral (512) chroma."""
    n, h, w = luma.shape
    chroma = np.full(2 * (h // 2) * (w // 2), 512, dtype="<u2").tobytes()
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420p10\n".encode())
        for frame in luma:
            f.write(b"FRAME\n")
            f.write(frame.astype("<u2").tobytes())
            f.write(chroma)
