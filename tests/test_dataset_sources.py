"""Reading sources into cropped 10-bit luma, and their bad-input errors."""
import numpy as np
import pytest
from skimage import io

from av1_ablation.dataset.sources import parse_sources, read_frames, write_y4m
from av1_ablation.errors import UserError


def _y4m(path, frames, tag="C420p10", depth=10):
    n, h, w = frames.shape
    dt = "<u2" if depth > 8 else np.uint8
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F25:1 Ip {tag}\n".encode())
        for k, y in enumerate(frames):
            f.write(b"FRAME Ixyz\n" if k == 1 else b"FRAME\n")  # frame headers may carry parameters
            f.write(y.astype(dt).tobytes())
            f.write(np.zeros(2 * (h // 2) * (w // 2), dtype=dt).tobytes())
    return path


def read(spec, **kw):
    (src,) = parse_sources([str(spec)])
    return read_frames(src, **kw)


def test_y4m_10bit_frames_are_selected_and_cropped_to_64(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 1024, size=(5, 100, 140), dtype=np.uint16)
    got = read(_y4m(tmp_path / "v.y4m", frames), frame_step=2, max_frames=2)
    assert got.indices == [0, 2]
    assert got.size == (100, 140)
    # centre crop 100x140 -> 64x128: rows 18..82, cols 6..134
    np.testing.assert_array_equal(got.luma, frames[[0, 2], 18:82, 6:134])
    assert read(tmp_path / "v.y4m", frames=[4, 1]).indices == [4, 1]


def test_y4m_8bit_is_upshifted(tmp_path):
    frames = np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64) % 256
    got = read(_y4m(tmp_path / "v.y4m", frames, tag="C420jpeg", depth=8))
    np.testing.assert_array_equal(got.luma[0], frames[0] << 2)


def test_own_y4m_writer_round_trips(tmp_path):
    frames = np.random.default_rng(1).integers(0, 1024, size=(2, 64, 128), dtype=np.uint16)
    write_y4m(tmp_path / "w.y4m", frames)
    np.testing.assert_array_equal(read(tmp_path / "w.y4m").luma, frames)


def test_truncated_or_foreign_y4m_is_refused(tmp_path):
    path = _y4m(tmp_path / "v.y4m", np.zeros((2, 64, 64), dtype=np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(UserError, match="truncated Y4M"):
        read(path)
    path.write_bytes(b"RIFF" + data[4:])
    with pytest.raises(UserError, match="not a Y4M file"):
        read(path)
    with pytest.raises(UserError, match=r"--frames \[7\] out of range"):
        read(_y4m(tmp_path / "ok.y4m", np.zeros((2, 64, 64), dtype=np.uint16)), frames=[7])


def test_raw_yuv_size_from_name_and_whole_frames(tmp_path):
    h, w = 64, 96
    frames = np.random.default_rng(2).integers(0, 1024, size=(3, h, w), dtype=np.uint16)
    raw = b"".join(f.astype("<u2").tobytes() + np.zeros(h * w // 2, "<u2").tobytes() for f in frames)
    path = tmp_path / f"Seq_{w}x{h}_50fps_420_10bit_YUV.yuv"
    path.write_bytes(raw)
    got = read(path, frames=[2])
    np.testing.assert_array_equal(got.luma[0], frames[2, :, 16:80])
    path.write_bytes(raw[:-2])
    with pytest.raises(UserError, match="not a whole number of 96x64 10-bit"):
        read(path)
    other = tmp_path / "noname.yuv"
    other.write_bytes(raw)
    with pytest.raises(UserError, match="--width and --height"):
        read(other)
    assert read(other, width=w, height=h).luma.shape == (3, 64, 64)


def test_pictures_png_small_and_unknown_kinds(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, size=(70, 130, 3), dtype=np.uint8)
    io.imsave(tmp_path / "p.png", rgb, check_contrast=False)
    got = read(tmp_path / "p.png")
    luma = np.rint(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint16) << 2
    np.testing.assert_array_equal(got.luma[0], luma[3:67, 1:129])
    io.imsave(tmp_path / "s.png", rgb[:60], check_contrast=False)
    with pytest.raises(UserError, match="smaller than 64x64"):
        read(tmp_path / "s.png")
    with pytest.raises(UserError, match="unknown source kind"):
        parse_sources([str(tmp_path / "p.bmp")])
    with pytest.raises(UserError, match="unknown embedded photo"):
        parse_sources(["embedded:lena"])
    with pytest.raises(UserError, match="does not exist"):
        parse_sources([str(tmp_path / "missing.y4m")])


def test_embedded_expands_to_the_17_photos_and_crop_applies():
    srcs = parse_sources(["embedded"])
    assert len(srcs) == 17 and srcs[0].spec == "embedded:astronaut"
    got = read("embedded:camera", crop=100)
    assert got.luma.shape == (1, 64, 64) and got.size == (512, 512) and got.luma.max() <= 1023
