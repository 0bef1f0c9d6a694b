"""End to end with the real aomenc and libaom, and the CLI's bad-input errors."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from av1_ablation.cli import main
from av1_ablation.dataset import aomenc, decoder, load_store
from av1_ablation.dataset.command import int_list
from av1_ablation.dataset.labels import ABSENT, BLOCK_DIMS, node_labels
from av1_ablation.dataset.sources import write_y4m
from av1_ablation.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _camera_crop(size=128):
    y = skimage.data.camera().astype(np.uint16) << 2
    top = (512 - size) // 2
    return y[top:top + size, top:top + size]


def test_real_encode_decode_passes_the_geometry_check(tmp_path):
    luma = _camera_crop()
    write_y4m(tmp_path / "c.y4m", luma[None])
    args = aomenc.encode_args(cq_level=32, cpu_used=2, frames=1, allintra=False)
    aomenc.run_encode(args, tmp_path / "c.y4m", tmp_path / "c.ivf")
    (bsize, part, qindex, base_q), = list(decoder.decode_mode_info(tmp_path / "c.ivf", 32, 32))
    assert base_q == 128 and (qindex == 128).all()  # cq 32 -> qindex 4 * 32, delta-q off
    assert bsize.shape == (32, 32)
    assert max(max(BLOCK_DIMS[b]) for b in np.unique(bsize)) <= 64  # --sb-size=64
    labels = node_labels(bsize, part)  # raises on any inconsistent node
    assert labels.shape == (8, 8) and (labels != ABSENT).sum() > 20
    # min-partition-size=8: no 4x4/4x8/8x4 leaves, hence no 1:4 types either
    assert bsize.min() >= 3 and not np.isin(labels, [8, 9]).any()


def test_store_blocks_are_the_source_pixels(tiny_dataset):
    st = load_store(tiny_dataset)
    cam = st.manifest["sources"][0]
    assert cam["name"] == "camera" and cam["size"] == [512, 512] and cam["cropped"] == [128, 128]
    luma = _camera_crop()
    rows = np.flatnonzero(st.source == 0)
    for i in rows:
        y, x = st.pos[i]
        np.testing.assert_array_equal(st.blocks[i], luma[y:y + 16, x:x + 16])
    assert set(st.qindex.tolist()) == {128} and set(st.frame.tolist()) == {0}
    assert st.blocks.max() <= 1023


def test_manifest_records_tools_settings_and_exact_arguments(tiny_dataset):
    m = load_store(tiny_dataset).manifest
    assert m["tools"]["libaom"] == decoder.libaom_version() and m["tools"]["aomenc"][0].isdigit()
    assert m["settings"]["qps"] == [32] and m["settings"]["allintra"] is False
    assert len(m["encodes"]) == 6 and {e["source"] for e in m["encodes"]} == set(range(6))
    args = m["encodes"][0]["args"]
    for flag in ("--kf-max-dist=0", "--cq-level=32", "--cpu-used=2", "--bit-depth=10", "--input-bit-depth=10",
                 "--min-partition-size=8", "--sb-size=64", "--deltaq-mode=0", "--end-usage=q", "--limit=1"):
        assert flag in args
    assert all(len(s["sha256"]) == 64 for s in m["sources"])
    assert set(m["files"]) == {f"{k}.npy" for k in ("blocks", "labels", "qindex", "source", "frame", "pos")}
    assert sum(m["counts"]["per_type"].values()) == m["num_blocks"]


def test_qp_lists_as_mlproject_passes_them():
    assert int_list(["20 32 43 55"]) == [20, 32, 43, 55]
    assert int_list(["20,32"]) == [20, 32] and int_list(["20", "32"]) == [20, 32]
    with pytest.raises(UserError, match="not an integer"):
        int_list(["20;32"])


def _cli_fails(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    rc = main(["dataset", "--out", str(out), "--no-progress", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


def test_cli_bad_inputs(tmp_path, capsys):
    _cli_fails(tmp_path, capsys, ["--qp", "20 64"], "must be in 0..63")
    _cli_fails(tmp_path, capsys, ["--qp", "-1"], "must be in 0..63")
    _cli_fails(tmp_path, capsys, ["--source", "clip.bmp"], "unknown source kind")
    _cli_fails(tmp_path, capsys, ["--source", "camera"], "unknown source kind")
    _cli_fails(tmp_path, capsys, ["--source", "embedded:nope"], "unknown embedded photo")
    bad = tmp_path / "t.y4m"
    bad.write_bytes(b"YUV4MPEG2 W64 H64 F25:1 C420p10\nFRAME\n" + b"\0" * 100)
    _cli_fails(tmp_path, capsys, ["--source", str(bad)], "truncated Y4M")
    yuv = tmp_path / "v.yuv"
    yuv.write_bytes(b"\0" * (64 * 64 * 3 + 10))
    _cli_fails(tmp_path, capsys, ["--source", str(yuv), "--width", "64", "--height", "64"], "not a whole number")
    small = tmp_path / "small.png"
    import skimage.io
    skimage.io.imsave(small, np.zeros((32, 80), np.uint8), check_contrast=False)
    _cli_fails(tmp_path, capsys, ["--source", str(small)], "smaller than 64x64")
    _cli_fails(tmp_path, capsys, ["--source", "embedded:coins", "--cpu-used", "7"], "--cpu-used must be in 0..6")


def test_missing_aomenc_is_reported_with_the_fix(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "av1_ablation", "dataset", "--source", "embedded:coins",
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "aomenc" in proc.stderr and "apt-get install aom-tools libaom3" in proc.stderr
    assert not out.exists()


def test_missing_or_old_libaom_is_reported(monkeypatch):
    decoder.load_libaom.cache_clear()
    monkeypatch.setattr(decoder.ctypes.util, "find_library", lambda name: "libaom-not-installed.so.0")
    with pytest.raises(UserError, match="apt-get install aom-tools libaom3"):
        decoder.load_libaom()
    decoder.load_libaom.cache_clear()
    with pytest.raises(UserError, match="libaom 3.2.0 is too old"):
        decoder.check_version(3 << 16 | 2 << 8)
    decoder.check_version(3 << 16 | 3 << 8)
    decoder.check_version(3 << 16 | 6 << 8)


def test_video_frames_are_encoded_and_recorded(tmp_path):
    cam = skimage.data.camera().astype(np.uint16) << 2
    frames = np.stack([cam[200 + k * 40:264 + k * 40, 180:308] for k in range(3)])
    h, w = frames.shape[1:]
    raw = b"".join(f.astype("<u2").tobytes() + np.full(h * w // 2, 512, "<u2").tobytes() for f in frames)
    (tmp_path / "clip.yuv").write_bytes(raw)
    out = tmp_path / "s"
    assert main(["dataset", "--source", str(tmp_path / "clip.yuv"), "--width", str(w), "--height", str(h),
                 "--frames", "0,2", "--qp", "32", "--out", str(out), "--no-progress"]) == 0
    st = load_store(out)
    assert set(st.frame.tolist()) == {0, 2} and st.manifest["sources"][0]["frames"] == [0, 2]
    assert "--limit=2" in st.manifest["encodes"][0]["args"]
    for i in range(len(st)):
        y, x = st.pos[i]
        np.testing.assert_array_equal(st.blocks[i], frames[st.frame[i], y:y + 16, x:x + 16])


def test_a_build_into_a_log_prints_progress_lines(tmp_path, capsys):
    from av1_ablation.dataset import build_dataset

    build_dataset(["embedded:camera", "embedded:coffee"], tmp_path / "store", qps=(32,), cpu_used=2, crop=64, progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("encodes:")]
    assert lines and lines[-1].startswith("encodes: 2/2 done in"), lines  # captured output is not a terminal
    assert " frames/min, " in lines[-1] and lines[-1].endswith(" blocks/s)"), lines
