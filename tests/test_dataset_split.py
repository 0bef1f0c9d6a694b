"""Splits: grouped by source, deterministic, block-level for comparison."""
import numpy as np
import pytest

from av1_ablation.dataset import load_store, make_split
from av1_ablation.dataset.store import write_store
from av1_ablation.errors import UserError


def test_tiny_dataset_has_what_the_training_tests_need(tiny_dataset):
    st = load_store(tiny_dataset)
    counts = st.manifest["counts"]["stage2"]
    assert min(counts.values()) > 0, counts
    assert len(np.unique(st.source)) == 6


def test_source_split_groups_whole_sources_and_fills_every_split(tiny_dataset):
    st = load_store(tiny_dataset)
    sp = make_split(st, seed=0)
    parts = [sp.train, sp.val, sp.test]
    assert all(len(p) for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(st)))
    srcs = [set(st.source[p].tolist()) for p in parts]
    assert not (srcs[0] & srcs[1] or srcs[0] & srcs[2] or srcs[1] & srcs[2])
    assert all(np.all(np.diff(p) > 0) and p.dtype == np.int64 for p in parts)
    assert sp.params["mode"] == "source" and sp.params["store"] == st.fingerprint
    assert sorted(sum(sp.params["sources"].values(), [])) == sorted(s["name"] for s in st.manifest["sources"])
    assert sp.note is None


def test_source_split_is_deterministic_per_seed(tiny_dataset):
    st = load_store(tiny_dataset)
    a, b = make_split(st, seed=3), make_split(st, seed=3)
    assert a.fingerprint == b.fingerprint and np.array_equal(a.val, b.val)
    fingerprints = {make_split(st, seed=s).fingerprint for s in range(6)}
    assert len(fingerprints) > 1  # the seed matters


def test_random_split_is_block_level_like_the_original(tiny_dataset):
    st = load_store(tiny_dataset)
    sp = make_split(st, mode="random", seed=42)
    perm = np.random.default_rng(42).permutation(len(st))
    cut = int(len(st) * 0.8)
    assert np.array_equal(sp.train, np.sort(perm[:cut])) and np.array_equal(sp.val, np.sort(perm[cut:]))
    assert len(sp.test) == 0 and "block-level" in sp.note


def _store(tmp_path, sources, legacy=False):
    n = 12
    arrays = {
        "blocks": np.zeros((n, 16, 16), np.uint16), "labels": np.full(n, 3, np.uint8),
        "qindex": np.zeros(n, np.uint16), "source": (np.arange(n) % sources).astype(np.int32),
        "frame": np.zeros(n, np.int32), "pos": np.zeros((n, 2), np.int32),
    }
    manifest = {"kind": "test", "sources": [{"id": i, "name": f"s{i}"} for i in range(sources)]}
    if legacy:
        manifest["legacy_split"] = {"train": 0, "val": 1}
    return load_store(write_store(tmp_path / "s", arrays, manifest))


def test_too_few_sources_and_bad_arguments(tmp_path):
    st = _store(tmp_path, 2)
    with pytest.raises(UserError, match="at least 3 sources"):
        make_split(st)
    assert len(make_split(st, fractions=(0.5, 0.5, 0.0)).test) == 0
    with pytest.raises(UserError, match="summing to 1"):
        make_split(st, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(UserError, match="unknown split mode"):
        make_split(st, mode="sequence")


def test_legacy_pt_keeps_its_assignment(tmp_path):
    st = _store(tmp_path, 2, legacy=True)
    sp = make_split(st)
    assert np.array_equal(sp.train, np.arange(0, 12, 2)) and np.array_equal(sp.val, np.arange(1, 12, 2))
    assert len(sp.test) == 0 and "train.pt/val.pt" in sp.note


def test_folds_test_every_source_once_and_keep_it_out_of_training(tiny_dataset):
    st = load_store(tiny_dataset)
    splits = [make_split(st, folds=3, fold=k, seed=1) for k in range(3)]
    tested = np.concatenate([sp.test for sp in splits])
    assert np.array_equal(np.sort(tested), np.arange(len(st)))  # every block tested exactly once
    for k, sp in enumerate(splits):
        parts = [set(st.source[p].tolist()) for p in (sp.train, sp.val, sp.test)]
        assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert sp.params["folds"] == 3 and sp.params["fold"] == k
        assert np.array_equal(np.sort(np.concatenate([sp.train, sp.val, sp.test])), np.arange(len(st)))
    assert make_split(st, folds=3, fold=1, seed=1).fingerprint == splits[1].fingerprint
    assert len({sp.fingerprint for sp in splits}) == 3


def test_one_fold_is_the_single_split(tiny_dataset):
    st = load_store(tiny_dataset)
    assert make_split(st, folds=1, fold=0, seed=2).fingerprint == make_split(st, seed=2).fingerprint


def test_bad_fold_settings_are_refused(tiny_dataset, tmp_path):
    st = load_store(tiny_dataset)
    with pytest.raises(UserError, match="fold=3 must lie in 0..2"):
        make_split(st, folds=3, fold=3)
    with pytest.raises(UserError, match="folds=0"):
        make_split(st, folds=0)
    with pytest.raises(UserError, match="split_mode=source"):
        make_split(st, mode="random", folds=2)
    with pytest.raises(UserError, match="at least 7 sources"):
        make_split(st, folds=5, fold=0)  # 6 sources
    with pytest.raises(UserError, match="no sources to deal"):
        make_split(_store(tmp_path, 2, legacy=True), folds=2)
