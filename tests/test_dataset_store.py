"""Block store: atomic write, sha256 verification, reuse and refusal of builds."""
import json
import os

import numpy as np
import pytest

from av1_ablation.dataset import build_dataset, ensure_dataset, load_store
from av1_ablation.dataset import store as store_mod
from av1_ablation.dataset.store import write_store
from av1_ablation.errors import UserError


def _arrays(n=5):
    rng = np.random.default_rng(0)
    return {
        "blocks": rng.integers(0, 1024, size=(n, 16, 16)).astype(np.uint16),
        "labels": (np.arange(n) % 10).astype(np.uint8),
        "qindex": np.full(n, 128, dtype=np.uint16),
        "source": (np.arange(n) % 2).astype(np.int32),
        "frame": np.zeros(n, dtype=np.int32),
        "pos": np.stack([np.arange(n) * 16, np.zeros(n)], axis=1).astype(np.int32),
    }


def test_round_trip_counts_and_fingerprint(tmp_path):
    arrays = _arrays()
    out = write_store(tmp_path / "s", arrays, {"kind": "test", "sources": []})
    st = load_store(out)
    for name, a in arrays.items():
        np.testing.assert_array_equal(getattr(st, name), a)
        assert getattr(st, name).dtype == a.dtype
    assert st.manifest["counts"]["per_type"]["HORZ_A"] == 1
    assert st.manifest["counts"]["stage2"] == {"SPLIT": 1, "RECT": 2, "AB": 1}
    assert st.manifest["counts"]["one_to_four"] == 0
    assert len(st.fingerprint) == 64 and load_store(out).fingerprint == st.fingerprint
    assert sorted(os.listdir(tmp_path)) == ["s"]  # no temporary leftovers


def test_corrupted_array_is_detected(tmp_path):
    out = write_store(tmp_path / "s", _arrays(), {"kind": "test", "sources": []})
    labels = np.load(out / "labels.npy")
    labels[0] ^= 1
    np.save(out / "labels.npy", labels)
    with pytest.raises(UserError, match="labels.npy is corrupted"):
        load_store(out)
    assert load_store(out, verify=False).labels[0] == labels[0]
    (out / "pos.npy").unlink()
    with pytest.raises(UserError, match="pos.npy is missing"):
        load_store(out, verify=False)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_save(path, arr, allow_pickle):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        np.lib.format.write_array(open(path, "wb"), arr)

    monkeypatch.setattr(store_mod.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_store(tmp_path / "s", _arrays(), {"kind": "test", "sources": []})
    assert os.listdir(tmp_path) == []


def test_existing_directory_is_refused_without_overwrite(tmp_path):
    out = write_store(tmp_path / "s", _arrays(), {"kind": "test", "sources": []})
    with pytest.raises(UserError, match="--overwrite"):
        write_store(out, _arrays(3), {"kind": "test", "sources": []})
    write_store(out, _arrays(3), {"kind": "test", "sources": []}, overwrite=True)
    assert len(load_store(out)) == 3 and sorted(os.listdir(tmp_path)) == ["s"]


def test_missing_manifest_names_the_dataset_command(tmp_path):
    with pytest.raises(UserError, match="av1-ablation dataset --out"):
        load_store(tmp_path)
    with pytest.raises(UserError, match="av1-ablation dataset --out"):
        ensure_dataset(tmp_path)


def test_same_request_reuses_a_different_one_is_refused(tiny_dataset, capsys):
    sources = [s["spec"] for s in json.loads((tiny_dataset / "manifest.json").read_text())["request"]["sources"]]
    before = (tiny_dataset / "manifest.json").stat().st_mtime_ns
    again = build_dataset(sources, tiny_dataset, qps=(32,), crop=128, progress=False, jobs=1)
    assert again == tiny_dataset and "reusing" in capsys.readouterr().out
    assert (tiny_dataset / "manifest.json").stat().st_mtime_ns == before
    assert ensure_dataset(tiny_dataset) == tiny_dataset
    with pytest.raises(UserError, match="different request.*--overwrite"):
        build_dataset(sources, tiny_dataset, qps=(32, 43), crop=128, progress=False)
    with pytest.raises(UserError, match="different request"):
        build_dataset(sources[:3], tiny_dataset, qps=(32,), crop=128, progress=False)
    assert (tiny_dataset / "manifest.json").stat().st_mtime_ns == before


def test_overwrite_rebuilds(tmp_path):
    out = build_dataset(["embedded:coins"], tmp_path / "s", qps=(55,), crop=64, progress=False)
    first = json.loads((out / "manifest.json").read_text())
    out = build_dataset(["embedded:coins"], out, qps=(20,), crop=64, progress=False, overwrite=True)
    second = load_store(out)
    assert first["settings"]["qps"] == [55] and second.manifest["settings"]["qps"] == [20]
    assert set(second.qindex.tolist()) == {80}
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_a_foreign_directory_is_never_replaced(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a block store"):
        build_dataset(["embedded:coins"], tmp_path / "mine", qps=(55,), crop=64, progress=False, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
