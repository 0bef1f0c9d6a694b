"""Building a labelled block store: encode with aomenc, decode with libaom, label.

Each (source, QP) pair is one intra-only aomenc encode of the source's selected
frames; encodes run in parallel (each aomenc single-threaded, so the labels do
not depend on the machine). The blocks are the *source* pixels of every
existing 16x16 node, the labels the partition type libaom chose for it.

A build is resumable: each finished encode's labels are kept in ``<out>.partial/``
under a key of everything that determines them (the frames' pixels, the aomenc
arguments, the tool versions and the label code), so an interrupted build
continues from its finished encodes and gives the same blocks and labels as an
uninterrupted one (the manifest adds how many encodes were resumed). ``--out`` is
written only once complete, and ``<out>.partial/`` is removed then.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from av1_ablation import __version__
from av1_ablation.dataset import aomenc, decoder, importers, labels, packaged, sources as src_mod
from av1_ablation.dataset.labels import ABSENT, node_labels
from av1_ablation.dataset.partitions import to_stage2
from av1_ablation.dataset.split import make_split
from av1_ablation.dataset.store import class_counts, read_manifest, write_store
from av1_ablation.errors import UserError

DEFAULT_QPS = (20, 32, 43, 55)
DEFAULT_DATA_DIR = Path(os.environ.get("AV1_ABLATION_DATA") or "data/embedded")


def cq_to_qindex(cq: int) -> int:
    """Base qindex libaom uses for ``--cq-level`` (4 * cq, 63 -> 255)."""
    return 255 if cq == 63 else 4 * cq


def _check_int(name, value, low, high=None, *, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{name} must be an integer; got {value!r}")
    if value < low or (high is not None and value > high):
        span = f"be in {low}..{high}" if high is not None else f"be >= {low}"
        raise UserError(f"{name} must {span}; got {value}")
    return int(value)


def _check_request(qps, cpu_used, jobs, crop, allintra, width, height, frame_step, frames, max_frames):
    qps = list(qps)
    if not qps:
        raise UserError("no QP given; pass --qp with values in 0..63")
    qps = sorted({_check_int("QP (cq-level)", q, 0, 63) for q in qps})
    _check_int("--cpu-used", cpu_used, 0, 9 if allintra else 6)
    _check_int("--jobs", jobs, 0)
    _check_int("--crop", crop, 64, allow_none=True)
    _check_int("--width", width, 1, allow_none=True)
    _check_int("--height", height, 1, allow_none=True)
    _check_int("--frame-step", frame_step, 1)
    _check_int("--max-frames", max_frames, 1, allow_none=True)
    if frames is not None:
        frames = [_check_int("--frames", f, 0) for f in frames]
    return qps, frames


def build_dataset(sources: list[str], out, *, qps=DEFAULT_QPS, cpu_used=2, jobs=0, crop=None,
                  allintra=False, width=None, height=None, frame_step=1, frames=None,
                  max_frames=None, overwrite=False, progress=True) -> Path:
    """Build (or reuse) a labelled block store.

    Parameters
    ----------
    sources : list of str
        ``embedded``, ``embedded:NAME``, ``extended``, ``extended:NAME``,
        ``.y4m``/``.yuv``/``.png``/``.jpg``/``.mp4`` paths, ``legacy-raw:DIR`` or
        ``legacy-pt:FILE``. ``extended`` (the embedded photos plus the packaged
        ones, see :mod:`~av1_ablation.dataset.packaged`) also asks the store's
        split for :data:`~av1_ablation.dataset.packaged.MIN_SPLIT_SOURCES`.
    out : path-like
        Store directory.
    qps : sequence of int, default=(20, 32, 43, 55)
        aomenc ``--cq-level`` values (0..63); one encode per source and QP.
    cpu_used : int, default=2
        aomenc speed; <= 4 keeps AB partitions at 16x16.
    jobs : int, default=0
        Parallel encodes; 0 uses every core.
    crop : int, optional
        Centre crop each picture to ``crop`` x ``crop`` (then to a multiple of 64).
    allintra : bool, default=False
        libaom's all-intra profile instead of good quality with key frames only.
    width, height : int, optional
        Picture size of raw ``.yuv`` sources.
    frame_step, frames, max_frames
        Frame selection for videos.
    overwrite : bool, default=False
        Replace an existing store built from a different request.
    progress : bool, default=True
        Show a progress bar.

    Returns
    -------
    pathlib.Path
        The store directory. A store built from the same request is reused.

    Raises
    ------
    UserError
        Bad input or missing tools; nothing is written then.
    """
    out = Path(out)
    if isinstance(sources, str):
        sources = [sources]
    qps, frames = _check_request(qps, cpu_used, jobs, crop, allintra, width, height,
                                 frame_step, frames, max_frames)
    parsed = src_mod.parse_sources(list(sources) or ["embedded"])
    legacy = [s for s in parsed if s.kind.startswith("legacy-")]
    if legacy:
        return _import(parsed, legacy, out, overwrite)

    aomenc.find_aomenc()
    decoder.load_libaom()
    read = [src_mod.read_frames(s, width=width, height=height, frame_step=frame_step, frames=frames,
                                max_frames=max_frames, crop=crop) for s in parsed]
    settings = {
        "qps": qps, "qindex": [cq_to_qindex(q) for q in qps], "cpu_used": cpu_used,
        "profile": "allintra" if allintra else "good, key frames only (kf-max-dist=0)",
        "allintra": allintra, "bit_depth": 10, "crop": crop, "width": width, "height": height,
        "frame_step": frame_step, "frames": frames, "max_frames": max_frames,
    }
    request = {
        "sources": [{"spec": s.spec, "sha256": r.sha256} for s, r in zip(parsed, read)],
        "settings": settings,
        "tools": {"aomenc": aomenc.aomenc_version(), "libaom": decoder.libaom_version()},
    }
    if "extended" in sources:
        request["split_min_sources"] = packaged.MIN_SPLIT_SOURCES
    partial = out.with_name(out.name + ".partial")
    if _reusable(out, request, overwrite):
        shutil.rmtree(partial, ignore_errors=True)  # left by a build that died after writing
        return out

    started = time.perf_counter()
    arrays, encodes, absent, work = _encode_all(parsed, read, qps, cpu_used, allintra, jobs, progress, partial)
    elapsed = max(time.perf_counter() - started, 1e-9)
    manifest = _manifest(request, parsed, read, arrays, encodes, absent, work, elapsed)
    write_store(out, arrays, manifest, overwrite=overwrite)
    shutil.rmtree(partial, ignore_errors=True)
    return out


def _manifest(request, parsed, read, arrays, encodes, absent, work, elapsed) -> dict:
    """The manifest of an encoded store (see :mod:`~av1_ablation.dataset.store`)."""
    qps = request["settings"]["qps"]
    manifest = {
        "kind": "encoded",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "generator": f"av1_ablation {__version__}",
        "request": request,
        "tools": {**request["tools"], "aomenc_path": aomenc.find_aomenc()},
        "settings": {**request["settings"],
                     "luma": "BT.601 full-range luma of 8-bit pictures << 2; chroma neutral (512)",
                     "blocks": "source pixels (not the decoded picture)"},
        "sources": [
            {"id": i, "kind": s.kind, "name": s.name, "spec": s.spec, "sha256": r.sha256,
             "size": list(r.size), "cropped": list(r.luma.shape[1:]), "frames": r.indices, **r.info}
            for i, (s, r) in enumerate(zip(parsed, read))
        ],
        "encodes": encodes,
        "counts_per_qp": {str(q): class_counts(arrays["labels"][arrays["qindex"] == cq_to_qindex(q)])
                          for q in qps},
        "absent_nodes": absent,
        "build_seconds": round(elapsed, 2),
        "encode_seconds": round(sum(e["seconds"] for e in encodes), 2),
        # rates of this build's own encodes (a resumed build's earlier ones are not timed here)
        "blocks_per_second": round(work["blocks"] / elapsed, 1),
        "frames_per_minute": round(60 * work["frames"] / elapsed, 1),
    }
    if work["resumed"]:
        manifest["resumed_encodes"] = work["resumed"]
    if "split_min_sources" in request:
        manifest["split_min_sources"] = request["split_min_sources"]
    manifest["default_split"] = _default_split(arrays, manifest)
    return manifest


def _default_split(arrays: dict, manifest: dict) -> dict:
    """Sources and blocks per split of the training commands' default split (seed 0)."""

    store = SimpleNamespace(path="(this store)", labels=arrays["labels"], source=arrays["source"],
                            manifest=manifest, fingerprint="")
    try:
        split = make_split(store)
    except UserError as exc:  # too few sources for a source split: train with mode=random
        return {"note": str(exc)}
    parts = {k: getattr(split, k) for k in ("train", "val", "test")}
    return {"seed": 0, "fractions": split.params["fractions"], "sources": split.params["source_counts"],
            "blocks": {k: len(v) for k, v in parts.items()},
            "stage2_blocks": {k: int((to_stage2(arrays["labels"][v]) >= 0).sum()) for k, v in parts.items()}}


def _reusable(out: Path, request: dict, overwrite: bool) -> bool:
    if not out.exists():
        return False
    if (out / "manifest.json").is_file() and read_manifest(out).get("request") == request:
        print(f"{out}: a store built from the same sources and settings exists; reusing it")
        return True
    is_store = (out / "manifest.json").is_file()
    if not is_store and (not out.is_dir() or any(out.iterdir())):
        # Never replace a directory (or file) that is not ours, even with --overwrite.
        raise UserError(f"{out} already exists and is not a block store; choose another --out")
    if is_store and not overwrite:
        raise UserError(f"{out} already exists and is a store built from a different request; "
                        "pass --overwrite to replace it or choose another --out")
    return False


def _encode_one(frames: np.ndarray, y4m: Path, qp: int, cpu_used: int, allintra: bool, workdir: Path,
                encoders: aomenc.EncoderGroup | None = None, keep: Path | None = None):
    """Encode one source at one QP; return its label grids (F, H/16, W/16) and the encode record
    (also saved to ``keep``, for a resumed build)."""
    args = aomenc.encode_args(cq_level=qp, cpu_used=cpu_used, frames=len(frames), allintra=allintra)
    ivf = workdir / f"{y4m.stem}_q{qp}.ivf"
    t0 = time.perf_counter()
    aomenc.run_encode(args, y4m, ivf, encoders)
    seconds = time.perf_counter() - t0
    n, h, w = frames.shape
    grids, want = [], cq_to_qindex(qp)
    for k, (bsize, part, qindex, base_q) in enumerate(decoder.decode_mode_info(ivf, h // 4, w // 4)):
        if base_q != want or (qindex != want).any():
            raise RuntimeError(f"frame {k} of {y4m.name} at cq {qp}: qindex {base_q} (blocks "
                               f"{np.unique(qindex).tolist()}) differs from the expected {want}")
        grids.append(node_labels(bsize, part))
    if len(grids) != n:
        raise RuntimeError(f"{y4m.name} at cq {qp}: decoded {len(grids)} frames, encoded {n}")
    ivf.unlink()
    record = {"qp": qp, "args": ["aomenc", *args, "-o", ivf.name, y4m.name], "seconds": round(seconds, 2)}
    grids = np.stack(grids)
    if keep is not None:
        _keep(keep, grids, record)
    return grids, record


def _keep(path: Path, grids: np.ndarray, record: dict) -> None:
    """Save a finished encode whole or not at all, even with two builds writing the same key."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, grids=grids, record=np.array(json.dumps(record)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _encode_key(luma: np.ndarray, qp: int, cpu_used: int, allintra: bool) -> str:
    """What determines an encode's labels: the frames' pixels, the aomenc arguments, the tools,
    and the code that turns the decoder's mode info into labels."""
    args = aomenc.encode_args(cq_level=qp, cpu_used=cpu_used, frames=len(luma), allintra=allintra)
    h = hashlib.sha256(json.dumps([list(luma.shape), args, aomenc.aomenc_version(), decoder.libaom_version(),
                                   _label_code()]).encode())
    h.update(np.ascontiguousarray(luma).tobytes())
    return h.hexdigest()[:32]


@functools.lru_cache(maxsize=None)
def _label_code() -> str:
    """sha256 of the modules that make labels, so that kept encodes of other label code are not reused."""
    h = hashlib.sha256()
    for module in (aomenc, decoder, labels):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()


def _refuse_twins(parsed, keys: dict) -> None:
    """Two sources with the same pixels would be one picture on both sides of a split."""
    seen = {}
    for (i, _), path in keys.items():
        j = seen.setdefault(path, i)
        if j != i:
            raise UserError(f"{parsed[j].spec} and {parsed[i].spec} have the same pixels; pass each picture "
                            "once (a picture in two sources could be trained on and tested)")


def _finished(path: Path, shape: tuple[int, int, int]):
    """The labels and record of an encode that an interrupted build finished, or None (a
    damaged file is removed, and the encode runs again)."""
    try:
        with np.load(path) as z:
            grids, record = z["grids"], json.loads(str(z["record"]))
        if grids.shape != shape or grids.dtype != np.int8:
            raise ValueError(f"{grids.dtype} labels of shape {grids.shape}, expected int8 {shape}")
        return grids, record
    except (EOFError, zipfile.BadZipFile, ValueError, KeyError) as exc:  # damaged: encoded again
        print(f"{path}: unreadable ({type(exc).__name__}: {exc}); encoding it again", flush=True)
        path.unlink(missing_ok=True)
        return None


def _encode_all(parsed, read, qps, cpu_used, allintra, jobs, progress, partial: Path):
    """Every (source, QP) encode, resuming from ``partial``; returns the store arrays, the
    encode records, the absent-node counts and this build's own work (frames, blocks, resumed)."""
    jobs = jobs or os.cpu_count() or 1
    encoders = aomenc.EncoderGroup()
    keys = {(i, qp): partial / f"{_encode_key(r.luma, qp, cpu_used, allintra)}.npz"
            for i, r in enumerate(read) for qp in qps}
    _refuse_twins(parsed, keys)
    partial.mkdir(parents=True, exist_ok=True)
    shape = {i: (len(r.luma), r.luma.shape[1] // 16, r.luma.shape[2] // 16) for i, r in enumerate(read)}
    done = {k: got for k, path in keys.items()
            if path.is_file() and (got := _finished(path, shape[k[0]])) is not None}
    if done:
        print(f"{partial}: resuming an interrupted build, {len(done)} of {len(keys)} encodes already "
              "finished", flush=True)
    with tempfile.TemporaryDirectory(prefix="av1-ablation-encode-") as tmp:
        tmp = Path(tmp)
        # Threads suffice: the work happens in aomenc processes and in libaom,
        # and the per-(source, QP) results come back without pickling.
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {}
            try:
                # Largest sources first, so that no long encode is left alone at the end.
                for i in sorted(range(len(read)), key=lambda k: -read[k].luma.size):
                    todo = [qp for qp in qps if (i, qp) not in done]
                    if not todo:
                        continue
                    y4m = tmp / f"source{i:04d}.y4m"
                    src_mod.write_y4m(y4m, read[i].luma)
                    for qp in todo:
                        futures[i, qp] = pool.submit(_encode_one, read[i].luma, y4m, qp, cpu_used,
                                                     allintra, tmp, encoders, keys[i, qp])
                _wait_for_encodes(futures, {k: len(read[k[0]].indices) for k in futures}, progress)
            except BaseException:
                # Ctrl-C, SIGTERM or a failed encode: stop the other encoders now, so that
                # the pool's exit does not wait for them and the directory they write
                # into can be removed
                for fut in futures.values():
                    fut.cancel()
                encoders.stop()
                raise
        parts, encodes = [], []
        absent = {"total": 0, "per_qp": {str(q): 0 for q in qps}}
        work = {"frames": sum(len(read[i].indices) for i, _ in futures), "resumed": len(done),
                "blocks": sum(int((f.result()[0] != ABSENT).sum()) for f in futures.values())}
        for i, r in enumerate(read):
            for qp in qps:
                if (i, qp) in done:
                    grids, record = done[i, qp][0], {**done[i, qp][1], "resumed": True}
                else:
                    grids, record = futures[i, qp].result()
                encodes.append({"source": i, **record})
                absent["per_qp"][str(qp)] += int((grids == ABSENT).sum())
                parts.append(_gather(r, i, cq_to_qindex(qp), grids))
        absent["total"] = sum(absent["per_qp"].values())
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return arrays, encodes, absent, work


def _wait_for_encodes(futures: dict, frames: dict, progress: bool) -> None:
    """Wait for every encode, with a progress bar on a terminal and a line per tenth of the
    encodes in a log, both with frames per minute and blocks per second; the first failure
    is raised."""
    from tqdm import tqdm

    t0, total = time.perf_counter(), len(futures)
    every, n_frames, n_blocks = max(1, total // 10), 0, 0
    key_of = {fut: key for key, fut in futures.items()}
    with tqdm(total=total, desc="encodes", unit="enc", disable=None if progress else True) as bar:
        for done, fut in enumerate(as_completed(list(futures.values())), 1):
            grids, _ = fut.result()
            n_frames += frames[key_of[fut]]
            n_blocks += int((grids != ABSENT).sum())
            seconds = max(time.perf_counter() - t0, 1e-9)
            rates = f"{60 * n_frames / seconds:.1f} frames/min, {n_blocks / seconds:.0f} blocks/s"
            bar.set_postfix_str(rates, refresh=False)
            bar.update()
            if progress and bar.disable and (done % every == 0 or done == total):
                print(f"encodes: {done}/{total} done in {seconds:.0f} s ({rates})", flush=True)


def _gather(r, source_id: int, qindex: int, grids: np.ndarray) -> dict:
    """Blocks and metadata of the existing nodes of one encode, in raster order."""
    f, gy, gx = np.nonzero(grids != ABSENT)
    n = len(f)
    blocks = r.luma.reshape(len(r.luma), grids.shape[1], 16, grids.shape[2], 16)[f, gy, :, gx, :]
    return {
        "blocks": np.ascontiguousarray(blocks, dtype=np.uint16),
        "labels": grids[f, gy, gx].astype(np.uint8),
        "qindex": np.full(n, qindex, dtype=np.uint16),
        "source": np.full(n, source_id, dtype=np.int32),
        "frame": np.asarray(r.indices, dtype=np.int32)[f],
        "pos": np.stack([gy * 16, gx * 16], axis=1).astype(np.int32).reshape(n, 2),
    }


def _import(parsed, legacy, out: Path, overwrite: bool) -> Path:
    if len(legacy) != len(parsed):
        raise UserError("legacy imports cannot be mixed with sources to encode; import them into their own --out")
    kinds = {s.kind for s in legacy}
    if "legacy-pt" in kinds and len(legacy) > 1:
        raise UserError("import one legacy-pt train.pt at a time, on its own")
    if kinds == {"legacy-pt"}:
        arrays, manifest = importers.import_legacy_pt(legacy[0].path)
    else:
        arrays, manifest = importers.import_legacy_raw([s.path for s in legacy])
    request = {"sources": manifest["request_sources"], "settings": {"import": manifest["kind"]}}
    if _reusable(out, request, overwrite):
        return out
    manifest = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "generator": f"av1_ablation {__version__}", "request": request, **manifest}
    return write_store(out, arrays, manifest, overwrite=overwrite)


def ensure_dataset(path=None, *, progress=True) -> Path:
    """A ready block store: ``path``, or the default one (built if missing).

    Parameters
    ----------
    path : path-like, optional
        An existing store. ``None`` means :data:`DEFAULT_DATA_DIR`, where the
        embedded default data set is built on first use (about 2 minutes).

    Raises
    ------
    UserError
        If ``path`` is given and does not exist or holds no store.
    """
    if path is None:
        path = DEFAULT_DATA_DIR
        if not (path / "manifest.json").is_file():
            build_dataset(["embedded"], path, progress=progress)
        return path
    path = Path(path)
    if not path.exists():
        raise UserError(f"data={path} does not exist; pass the directory of a block store, or build "
                        f"one there with `av1-ablation dataset --out {path}`")
    if not (path / "manifest.json").is_file():
        raise UserError(f"data={path} holds no block store (no manifest.json); build one with "
                        f"`av1-ablation dataset --out {path}`")
    return path
