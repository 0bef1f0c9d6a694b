"""Importers of the original raw layout and prepared train.pt/val.pt."""
import os

import numpy as np
import torch

from av1_ablation.cli import main
from av1_ablation.dataset import build_dataset, load_store, make_split


def _raw_dir(root, seqs):
    for sub in ("intra_raw_blocks", "labels", "qps"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for seq, (blocks, labels) in seqs.items():
        (root / f"intra_raw_blocks/{seq}_sample_16.txt").write_bytes(blocks.astype("<u2").tobytes())
        np.savetxt(root / f"labels/{seq}_labels_16_intra.txt", labels, fmt="%d")
        np.savetxt(root / f"qps/{seq}_qps_16_intra.txt", np.full(len(labels), 80), fmt="%d")
    return root


def _blocks(n, seed):
    return np.random.default_rng(seed).integers(0, 1024, size=(n, 16, 16)).astype(np.uint16)


def test_legacy_raw_import(tmp_path):
    seqs = {"Jockey": (_blocks(4, 1), np.array([0, 3, 4, 7])), "Beauty": (_blocks(3, 2), np.array([1, 2, 5]))}
    root = _raw_dir(tmp_path / "raw", seqs)
    st = load_store(build_dataset([f"legacy-raw:{root}"], tmp_path / "s", progress=False))
    # sorted sequence order, as the original loader
    assert [s["name"] for s in st.manifest["sources"]] == ["Beauty", "Jockey"]
    np.testing.assert_array_equal(st.blocks, np.concatenate([seqs["Beauty"][0], seqs["Jockey"][0]]))
    assert st.labels.tolist() == [1, 2, 5, 0, 3, 4, 7] and st.source.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert set(st.qindex.tolist()) == {80} and (st.pos == -1).all() and (st.frame == -1).all()


def test_legacy_raw_mismatched_counts_fail_through_the_cli(tmp_path, capsys):
    root = _raw_dir(tmp_path / "raw", {"Lips": (_blocks(4, 1), np.array([0, 3, 4]))})
    rc = main(["dataset", "--source", f"legacy-raw:{root}", "--out", str(tmp_path / "s")])
    assert rc == 2
    assert "4 samples, 3 labels, 3 QPs" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and sorted(os.listdir(tmp_path)) == ["raw"]


def _pt(path, blocks, labels):
    torch.save({
        "samples": torch.from_numpy(blocks[:, None].astype(np.float32) / np.float32(1023.0)),
        "labels_stage0": torch.from_numpy(labels.astype(np.int64)),
        "qps": torch.full((len(labels),), 80.0),
    }, path)


def test_legacy_pt_round_trip_is_exact(tmp_path):
    d = tmp_path / "block_16"
    d.mkdir()
    # every 10-bit value appears, so the rounding back is checked for all of them
    train = np.arange(1024 * 2, dtype=np.uint16).reshape(8, 16, 16) % 1024
    val = _blocks(3, 5)
    _pt(d / "train.pt", train, np.array([0, 1, 2, 3, 4, 5, 6, 7]))
    _pt(d / "val.pt", val, np.array([3, 3, 1]))
    st = load_store(build_dataset([f"legacy-pt:{d / 'train.pt'}"], tmp_path / "s", progress=False))
    np.testing.assert_array_equal(st.blocks, np.concatenate([train, val]))
    assert st.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 3, 3, 1]
    sp = make_split(st)
    assert sp.train.tolist() == list(range(8)) and sp.val.tolist() == [8, 9, 10] and len(sp.test) == 0
    assert sp.note


def test_legacy_pt_refuses_inexact_samples_and_missing_val(tmp_path, capsys):
    d = tmp_path / "pt"
    d.mkdir()
    _pt(d / "train.pt", _blocks(2, 0), np.array([0, 1]))
    out = tmp_path / "s"
    assert main(["dataset", "--source", f"legacy-pt:{d / 'train.pt'}", "--out", str(out)]) == 2
    assert "val.pt not found" in capsys.readouterr().err
    torch.save({"samples": torch.rand(2, 1, 16, 16), "labels_stage0": torch.zeros(2, dtype=torch.int64),
                "qps": torch.full((2,), 80.0)}, d / "val.pt")
    assert main(["dataset", "--source", f"legacy-pt:{d / 'train.pt'}", "--out", str(out)]) == 2
    assert "not 10-bit values / 1023" in capsys.readouterr().err
    assert not out.exists()
