"""Tests for sharded SEA label extraction over Ray tasks: same store as in process, resumable per shard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import core.labels.extract as extract_mod
import core.labels.parallel as parallel_mod
import core.labels.scoring as scoring_mod
from core.cache import is_built
from core.data import SyntheticSpec, ensure_synthetic
from core.labels import ExtractJob, LabelStore, caption_words, ensure_store, extract_store
from core.labels.extract import resolve_parallel, shard_bounds
from core.labels.store_format import read_shards
from core.steps import Lease
from core.steps.status import STATUS_FILE

BATCH = 8  # 24 images -> 3 batches; 2 shards -> rows 0:8 and 8:24
MISSING_ROWS = (3, 20)  # one missing image in each shard

pytestmark = pytest.mark.usefixtures("seagrid_cache")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny synthetic set with the images of ``MISSING_ROWS`` deleted."""
    json_path, image_root = ensure_synthetic(
        SyntheticSpec(num_samples=24, seed=1), root=tmp_path_factory.mktemp("data")
    )
    root = tmp_path_factory.mktemp("holes")
    shutil.copy(json_path, root / json_path.name)
    shutil.copytree(image_root, root / "images")
    records = json.loads(json_path.read_text())
    for row in MISSING_ROWS:
        (root / "images" / records[row]["image"]).unlink()
    return root / json_path.name, root / "images"


@pytest.fixture(scope="module")
def words(data: tuple[Path, Path]) -> list[str]:
    return caption_words(data[0])


@pytest.fixture(scope="module")
def reference(data: tuple[Path, Path], words: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store extracted in this process, the way every existing caller does."""
    out = tmp_path_factory.mktemp("reference") / "store"
    store = extract_store(
        ExtractJob("tiny-clip", words, *data, batch_size=BATCH, on_missing_image="skip"), out, progress=False
    )
    assert store is not None
    return out


def _files(store: Path) -> dict[str, bytes]:
    # The store's own files; `.status` is the record of the directory protocol that built it (when and
    # by whom: never equal between two builds), written by `ensure_store`, not by `extract_store`.
    return {p.name: p.read_bytes() for p in sorted(store.iterdir()) if p.is_file() and p.name != STATUS_FILE}


def _job(words, data) -> ExtractJob:
    return ExtractJob("tiny-clip", words, *data, batch_size=BATCH, on_missing_image="skip")


def test_shard_bounds_cut_whole_batches_evenly() -> None:
    assert shard_bounds(0, 24, 2, 8) == [(0, 8), (8, 24)]
    # 25 rows from 5 in batches of 4: 7 batches -> 2, 2, 3 batches; the last one is short.
    assert shard_bounds(5, 30, 3, 4) == [(5, 13), (13, 21), (21, 30)]
    assert shard_bounds(0, 3, 4, 8) == [(0, 3)] and shard_bounds(7, 7, 2, 8) == []
    for start in (0, 5):
        for rows in range(0, 30):
            for k in (1, 2, 3, 5):
                for batch in (1, 3, 8):
                    got = shard_bounds(start, start + rows, k, batch)
                    batches = -(-rows // batch)
                    assert len(got) == min(k, batches)
                    if not got:
                        continue
                    assert got[0][0] == start and got[-1][1] == start + rows
                    assert all(a < b for a, b in got)
                    assert all(got[j][1] == got[j + 1][0] for j in range(len(got) - 1))
                    assert all((a - start) % batch == 0 for a, _ in got)
                    sizes = [-(-(b - a) // batch) for a, b in got]
                    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="shards=0"):
        shard_bounds(0, 8, 0, 4)
    with pytest.raises(ValueError, match="stop=3: must be an int >= start=5"):
        shard_bounds(5, 3, 2, 4)


def test_resolve_parallel(monkeypatch) -> None:
    assert resolve_parallel(None, 10**6) == 1 and resolve_parallel(3, 5) == 3
    monkeypatch.setattr(parallel_mod, "_cluster_gpus", lambda: 4)
    assert resolve_parallel("auto", parallel_mod.AUTO_MIN_IMAGES) == 4
    assert resolve_parallel("auto", parallel_mod.AUTO_MIN_IMAGES - 1) == 1
    monkeypatch.setattr(parallel_mod, "_cluster_gpus", lambda: 1)
    assert resolve_parallel("auto", 10**6) == 1
    for bad in (0, -2, True, 2.0, "many"):
        with pytest.raises(
            ValueError, match=r"parallel=.*must be None \(in process\), 'auto' or an int >= 1"
        ):
            resolve_parallel(bad, 100)


@pytest.mark.slow
def test_parallel_store_is_byte_identical(
    ray_session, reference: Path, data: tuple[Path, Path], words: list[str], tmp_path: Path, monkeypatch
) -> None:
    def no_local_work(*args, **kwargs):
        raise AssertionError("a sharded extraction computed in the driver")

    real = extract_mod._run_shards_ray
    shards_seen: list[list[int]] = []

    def run_holding_lock(out_dir: Path, todo, *args, **kwargs) -> None:
        # Concurrent callers wait on the store's lock: the driver must hold it while the shards run.
        assert not Lease(out_dir.parent / f".{out_dir.name}.lock").try_acquire()
        shards_seen.append(list(todo))
        real(out_dir, todo, *args, **kwargs)

    # Ray workers import the module afresh, so these patches reach only the driver.
    monkeypatch.setattr(extract_mod, "_fill", no_local_work)
    monkeypatch.setattr(extract_mod, "_load", no_local_work)
    monkeypatch.setattr(extract_mod, "_run_shards_ray", run_holding_lock)
    store = ensure_store(_job(words, data), root=tmp_path, parallel=2, progress=False)
    assert shards_seen == [[0, 1]]
    assert isinstance(store, LabelStore) and is_built(store.path)
    got, want = _files(store.path), _files(reference)
    assert sorted(got) == sorted(want)  # no shard files left behind
    for name in want:
        assert got[name] == want[name], f"{name} differs from the in-process store"
    records = json.loads(data[0].read_text())
    assert store.missing_ids == [records[row]["id"] for row in MISSING_ROWS]  # row order across shards
    assert all((store[row][0] == -1).all() for row in MISSING_ROWS)
    assert np.mean([(store[row][0] >= 0).mean() for row in range(len(store))]) > 0.2  # not all empty


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_interrupted_parallel_extraction_resumes(
    ray_session, reference: Path, data: tuple[Path, Path], words: list[str], tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "partial"
    # One batch per shard: shard 0 (rows 0:8) finishes, shard 1 (rows 8:24) stops after rows 8:16.
    assert extract_store(_job(words, data), out, parallel=2, max_batches=1, progress=False) is None
    shards = read_shards(out)
    assert [(s["start"], s["done"], s["stop"]) for s in shards] == [(0, 8, 8), (8, 16, 24)]
    assert [len(s["missing"]) for s in shards] == [1, 0] and not is_built(out)
    with pytest.raises(ValueError, match=r"unfinished extraction \(16 images done"):
        LabelStore.open(out)

    # Mark the finished rows: a resume that recomputed them would overwrite the mark.
    index = np.load(out / "index.npy", mmap_mode="r+")
    index[:16] = 12345
    index.flush()
    del index
    # Another K does not re-cut a started extraction: the same two shards are resumed.
    resumed = extract_store(_job(words, data), out, parallel=3, progress=False)
    assert resumed is not None and is_built(out) and read_shards(out) == []
    got, want = np.load(out / "index.npy"), np.load(reference / "index.npy")
    assert (got[:16] == 12345).all()
    np.testing.assert_array_equal(got[16:], want[16:])
    np.testing.assert_array_equal(np.load(out / "score.npy"), np.load(reference / "score.npy"))
    assert resumed.missing_ids == LabelStore.open(reference).missing_ids


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_parallel_interruption_resumes_in_process(
    ray_session, reference: Path, data: tuple[Path, Path], words: list[str], tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "partial"
    assert extract_store(_job(words, data), out, parallel=2, max_batches=1, progress=False) is None
    seen: list[int] = []
    real = scoring_mod.extract_labels

    def counting(patch_features, *args, **kwargs):
        seen.append(patch_features.shape[0])
        return real(patch_features, *args, **kwargs)

    monkeypatch.setattr(scoring_mod, "extract_labels", counting)
    resumed = extract_store(_job(words, data), out, progress=False)  # parallel=None: the shards, here
    assert resumed is not None and seen == [BATCH - 1]  # shard 1's last batch; row 20's image is missing
    assert _files(out) == _files(reference)


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_failed_shard_fails_the_extraction(
    ray_session, data: tuple[Path, Path], words: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "failing"
    with pytest.raises(FileNotFoundError, match="image not found"):
        extract_store(
            ExtractJob("tiny-clip", words, *data, batch_size=BATCH), out, progress=False, parallel=2
        )
    assert not is_built(out) and len(read_shards(out)) == 2  # resumable, shard by shard


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_shards_read_the_drivers_word_features(
    data: tuple[Path, Path], words: list[str], tmp_path: Path
) -> None:
    """The driver encodes the word list once into the store directory; a shard's `_load` reads that file."""
    import torch

    job = _job(words, data)
    extract_mod._write_word_features(job, tmp_path, "cpu")
    stored = np.load(tmp_path / extract_mod.WORD_FEATURES_FILE)
    tower, encoded = extract_mod._load(job, torch.device("cpu"))  # no store directory: encoded here
    assert stored.shape == (len(words), encoded.shape[1])
    np.testing.assert_allclose(stored, encoded.numpy(), rtol=0, atol=1e-6)
    planted = np.random.default_rng(0).standard_normal(stored.shape).astype(np.float32)
    np.save(tmp_path / extract_mod.WORD_FEATURES_FILE, planted)
    assert np.array_equal(extract_mod._load(job, torch.device("cpu"), tmp_path)[1].numpy(), planted)
    np.save(tmp_path / extract_mod.WORD_FEATURES_FILE, planted[:-1])
    with pytest.raises(ValueError, match=r"word_features.npy: shape .* delete it"):
        extract_mod._load(job, torch.device("cpu"), tmp_path)
