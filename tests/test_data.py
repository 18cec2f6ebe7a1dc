"""Data sources, partitions and augmentation (all offline, well under a minute)."""

import gzip
import math
import os
import pickle

import chex
import jax
import numpy as np
import pytest

from flash_jax.data import formats, sources
from flash_jax.data.augment import random_crop_flip
from flash_jax.data.partition import iid_partition, lda_partition, partition
from flash_jax.data.sources import DataError, load_dataset, read_idx

FASHION_DIR = sources.DEBIAN_DIRS["fashion_mnist"]


# ---------------------------------------------------------------------------------------------- partition
@pytest.fixture(scope="module")
def labels():
    return np.random.default_rng(123).integers(0, 10, 60_000)


@pytest.mark.parametrize("num_clients", [100, 10_000])
def test_lda_sizes_disjoint_in_range(labels, num_clients):
    parts = lda_partition(labels, num_clients, alpha=0.5, seed=0)
    assert len(parts) == num_clients
    assert {len(p) for p in parts} == {len(labels) // num_clients}
    flat = np.concatenate(parts)
    assert flat.dtype == np.int64
    assert len(np.unique(flat)) == len(flat)
    assert flat.min() >= 0 and flat.max() < len(labels)


def test_lda_uneven_classes_and_leftovers():
    # Tiny alpha + a rare class: exhausted classes must be renormalised away, never over-drawn.
    labels = np.concatenate([np.zeros(5), np.ones(500), np.full(101, 7)]).astype(int)
    parts = lda_partition(labels, 7, alpha=0.01, seed=3)
    flat = np.concatenate(parts)
    assert {len(p) for p in parts} == {606 // 7} and len(np.unique(flat)) == len(flat)


def test_lda_reproducible(labels):
    a = lda_partition(labels, 50, 1.0, seed=7)
    b = lda_partition(labels, 50, 1.0, seed=7)
    c = lda_partition(labels, 50, 1.0, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def _max_class_fraction(labels, parts):
    return np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])


def test_small_alpha_concentrates_labels(labels):
    skewed = _max_class_fraction(labels, lda_partition(labels, 100, 0.05, seed=0))
    uniform = _max_class_fraction(labels, lda_partition(labels, 100, 1000.0, seed=0))
    assert skewed > 0.6 and uniform < 0.25  # measured: 0.77 and 0.12


def test_lda_first_client_class_counts_match_dirichlet_multinomial():
    # The first client never meets an exhausted class here, so its counts are DirMult(n, alpha).
    labels = np.repeat(np.arange(4), 100)
    n, alpha = 40, 0.5
    counts = np.array([np.bincount(labels[lda_partition(labels, 10, alpha, s)[0]], minlength=4)
                       for s in range(400)])
    assert np.allclose(counts.mean(0), n / 4, atol=1.5)
    expected_var = n * 0.25 * 0.75 * (n + 4 * alpha) / (1 + 4 * alpha)
    assert np.allclose(counts.var(0), expected_var, rtol=0.3)


def test_iid_and_dispatch(labels):
    parts = iid_partition(1003, 10, seed=1)
    assert {len(p) for p in parts} == {100}
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == 1000 and flat.max() < 1003
    for alpha in (None, math.inf):
        assert all(np.array_equal(x, y) for x, y in zip(partition(labels, 10, alpha, 2), iid_partition(60_000, 10, 2)))
    assert all(np.array_equal(x, y) for x, y in zip(partition(labels, 10, 0.3, 2), lda_partition(labels, 10, 0.3, 2)))


def test_partition_rejects_bad_arguments(labels):
    with pytest.raises(ValueError):
        partition(labels[:5], 6, 1.0, 0)
    with pytest.raises(ValueError):
        partition(labels, 10, 0.0, 0)
    with pytest.raises(ValueError):
        partition(labels, 10, -1.0, 0)


# ---------------------------------------------------------------------------------------------- sources
def _assert_standardised(ds, n_train, n_test, shape, num_classes):
    assert ds.train_x.shape == (n_train, *shape) and ds.test_x.shape == (n_test, *shape)
    assert ds.input_shape == shape and ds.num_classes == num_classes
    assert ds.train_x.dtype == ds.test_x.dtype == np.float32
    assert ds.train_y.dtype == ds.test_y.dtype == np.int32
    assert ds.train_y.min() >= 0 and ds.train_y.max() < num_classes
    assert np.allclose(ds.train_x.mean(axis=(0, 1, 2)), 0, atol=1e-3)
    assert np.allclose(ds.train_x.std(axis=(0, 1, 2)), 1, atol=1e-3)


def test_digits():
    ds = load_dataset("digits")
    _assert_standardised(ds, 1437, 360, (28, 28, 1), 10)
    again = load_dataset("digits")  # the split is fixed: the same images in the same order every time
    assert np.array_equal(ds.test_x, again.test_x) and np.array_equal(ds.test_y, again.test_y)
    assert np.array_equal(ds.train_y, again.train_y)
    assert np.all(ds.train_x[:, :2] == ds.train_x[0, 0, 0, 0])  # zero border stays one constant value


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="Debian's dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    ds = load_dataset("fashion_mnist")
    _assert_standardised(ds, 60_000, 10_000, (28, 28, 1), 10)
    assert np.array_equal(np.bincount(ds.test_y), np.full(10, 1000))


def _write_idx(file, array, gz):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    with (gzip.open if gz else open)(file, "wb") as f:
        f.write(header + array.tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_idx_parsing(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"img{suffix}", images, gz)
    _write_idx(tmp_path / f"ints{suffix}", np.arange(-3, 3).astype(">i4"), gz)
    assert np.array_equal(read_idx(tmp_path / f"img{suffix}"), images)
    assert np.array_equal(read_idx(tmp_path / f"ints{suffix}"), np.arange(-3, 3))

    # A whole dataset from --path: 4 IDX files.
    for stem, n in zip(sources.IDX_STEMS["mnist"], (6, 6, 3, 3)):
        data = images[:n] if "images" in stem else (np.arange(n) % 10).astype(np.uint8)
        _write_idx(tmp_path / (stem + suffix), data, gz)
    ds = load_dataset("mnist", path=str(tmp_path))
    assert ds.train_x.shape == (6, 5, 4, 1) and ds.test_x.shape == (3, 5, 4, 1)
    assert list(ds.train_y) == [0, 1, 2, 3, 4, 5]


def test_idx_bad_magic(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_inconsistent_or_truncated_idx_files_name_the_file(tmp_path):
    images = np.zeros((6, 5, 4), np.uint8)
    for stem, n in zip(sources.IDX_STEMS["mnist"], (6, 3, 3, 3)):  # 6 train images, 3 train labels
        _write_idx(tmp_path / (stem + ".gz"), images[:n] if "images" in stem else np.zeros(n, np.uint8), True)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz holds 6 images but .*train-labels.* holds 3"):
        load_dataset("mnist", path=str(tmp_path))
    file = tmp_path / "t10k-images-idx3-ubyte.gz"
    file.write_bytes(file.read_bytes()[:20])  # a download cut short
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: unreadable \(EOFError"):
        read_idx(file)


def test_cifar10_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 4))}
        with open(folder / name, "wb") as f:
            pickle.dump(batches[name], f)
    for path in (tmp_path, folder):  # the folder itself or its parent
        ds = load_dataset("cifar10", path=str(path))
        assert ds.train_x.shape == (20, 32, 32, 3) and ds.test_x.shape == (4, 32, 32, 3)
        assert list(ds.test_y) == batches["test_batch"][b"labels"]
    # Channel layout: row = R plane, G plane, B plane -> HWC.
    raw = batches["test_batch"][b"data"][1].reshape(3, 32, 32)
    x = ds.test_x[1]
    assert np.corrcoef(x[..., 2].ravel(), raw[2].ravel())[0, 1] > 0.999


def test_tfds_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        for name, shape, classes in [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10),
                                     ("cifar100", (32, 32, 3), 100), ("emnist", (28, 28, 1), 62)]:
            ds = load_dataset(name)
            assert ds.train_x.shape == (12, *shape) and ds.test_x.shape == (12, *shape)
            assert ds.num_classes == classes and ds.train_y.max() < classes


def test_tfds_array_record_bulk_read(tmp_path, monkeypatch):
    """The real (unmocked) data-source path, on a Tensor-feature builder that prepares without TensorFlow."""
    tfds = pytest.importorskip("tensorflow_datasets")
    images = np.random.default_rng(0).integers(0, 256, (25, 28, 28, 1), dtype=np.uint8)

    class FlashJaxProbe(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 20), "test": self._generate_examples(20, 25)}

        def _generate_examples(self, start, stop):
            for i in range(start, stop):
                yield i, {"image": images[i], "label": i % 10}

    FlashJaxProbe(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    monkeypatch.setitem(sources.TFDS_NAMES, "mnist", "flash_jax_probe")
    monkeypatch.setattr(formats, "_TFDS_CHUNK", 8)  # several chunks
    ds = load_dataset("mnist", data_dir=str(tmp_path))
    assert ds.train_x.shape == (20, 28, 28, 1) and ds.test_x.shape == (5, 28, 28, 1)
    order = np.argsort(ds.test_y)  # the data source may reorder examples; match them by label
    assert list(ds.test_y[order]) == [0, 1, 2, 3, 4]
    raw = images[20:25].astype(np.float64)
    assert np.corrcoef(ds.test_x[order].ravel(), raw.ravel())[0, 1] > 0.999


def _assert_one_line_error(match, *args, **kwargs):
    with pytest.raises(DataError, match=match) as info:
        load_dataset(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_data_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    message = _assert_one_line_error("fashion_mnist", "fashion_mnist", path=str(empty), data_dir=str(empty))
    assert "dataset-fashion-mnist" in message and "train-images-idx3-ubyte" in message and "tfds build" in message
    _assert_one_line_error("tfds build cifar10", "cifar10", data_dir=str(empty))
    _assert_one_line_error("cifar-100-python", "cifar100", path=str(empty))
    _assert_one_line_error("valid names", "imagenet")


# ---------------------------------------------------------------------------------------------- augment
def test_random_crop_flip():
    # Few compilations: on a busy 2-core CPU each jit of the threefry-based augmentation takes seconds.
    augment = jax.jit(random_crop_flip)
    both = np.random.default_rng(0).normal(size=(2, 8, 32, 32, 3)).astype(np.float32)
    images = both[0]
    out = np.asarray(augment(jax.random.key(1), images))
    assert out.shape == images.shape
    assert np.array_equal(out, augment(jax.random.key(1), images))
    assert not np.array_equal(out, augment(jax.random.key(2), images))

    # Each output is a window of the zero-padded image, mirrored for the images whose key flips.
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    flipped = []
    for x, p in zip(out, padded):
        windows = [p[dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        plain = any(np.array_equal(x, w) for w in windows)
        mirrored = any(np.array_equal(x, w[:, ::-1]) for w in windows)
        assert plain != mirrored  # random data: exactly one explanation
        flipped.append(mirrored)
    assert 0 < sum(flipped) < len(images)

    keys = jax.random.split(jax.random.key(4), 2)
    batched = jax.jit(jax.vmap(random_crop_flip))(keys, both)  # e.g. a client axis
    assert batched.shape == both.shape
    np.testing.assert_array_equal(batched[1], augment(keys[1], both[1]))


def test_tiny_imagenet_folder_loads_with_val_as_test(tmp_path):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    (root / "val" / "images").mkdir(parents=True)
    root.joinpath("wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(0)
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(root / "train" / w / "images" / f"{w}_{i}.JPEG")
    lines = []
    for i, w in enumerate(wnids[::-1]):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    root.joinpath("val", "val_annotations.txt").write_text("\n".join(lines) + "\n")
    data = load_dataset("tiny_imagenet", path=str(tmp_path))
    chex.assert_shape(data.train_x, (6, 64, 64, 3))
    np.testing.assert_array_equal(data.train_y, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(data.test_y, [1, 0])
    assert data.num_classes == 200 and data.train_x.dtype == np.float32
    with pytest.raises(DataError, match="tiny-imagenet-200"):
        load_dataset("tiny_imagenet", path=str(tmp_path / "nothing"))


def test_a_label_outside_the_classes_names_the_file_and_the_label(tmp_path):
    images = np.zeros((6, 5, 4), np.uint8)
    for stem, n in zip(sources.IDX_STEMS["fashion_mnist"], (6, 6, 3, 3)):
        labels = np.array([0, 1, 200, 3, 4, 5][:n], np.uint8)
        _write_idx(tmp_path / (stem + ".gz"), images[:n] if "images" in stem else labels, True)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: label 200 is outside 0..9 \(1 such labels\)"):
        load_dataset("fashion_mnist", path=str(tmp_path))
