"""MNIST IDX files: the real ones (where present), malformed ones, binarisation."""

import gzip
import hashlib
import struct

import numpy as np
import pytest

from conftest import MNIST_ROOT
from thermodiff.data.images import (
    IDX_TYPES,
    MNIST_FILES,
    binarize,
    load_binary_mnist,
    load_mnist,
    read_idx,
)
from thermodiff.errors import ConfigError, DataError

# From shared/data/README.md.
SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
CLASS_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}
SIZES = {"train": 60000, "test": 10000}

CODES = {np.dtype(v.str.replace(">", "=")).name: k for k, v in IDX_TYPES.items()}


# ---------------------------------------------------------------- helpers


def idx_bytes(arr, code=None, dims=None):
    """An IDX file's bytes: header and big-endian data."""
    arr = np.asarray(arr)
    code = CODES[arr.dtype.name] if code is None else code
    dims = arr.shape if dims is None else dims
    header = struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path, data, compress):
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def error_message(exc_type, fn, *args):
    with pytest.raises(exc_type) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def data_error(path, fn=read_idx, *args):
    """The DataError message of fn(path, *args): one line, starting with the path."""
    msg = error_message(DataError, fn, path, *args)
    assert msg.startswith(str(path)), msg
    return msg


def small_images(n=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def write_mnist(root, split, images, labels, names=None, compress=True):
    images_name, labels_name = names or MNIST_FILES[split]
    write(root / images_name, idx_bytes(images), compress)
    write(root / labels_name, idx_bytes(np.asarray(labels, dtype=np.uint8)), compress)


# ---------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def mnist():
    if not MNIST_ROOT.is_dir():
        pytest.skip(f"real MNIST files not found at {MNIST_ROOT} (see shared/data/README.md)")
    return {split: load_mnist(MNIST_ROOT, split) for split in ("train", "test")}


@pytest.mark.parametrize("name", sorted(SHA256))
def test_real_checksums(name):
    path = MNIST_ROOT / name
    if not path.is_file():
        pytest.skip(f"real MNIST file not found: {path}")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256[name]


@pytest.mark.parametrize("split", ["train", "test"])
def test_real_shapes_labels_and_range(mnist, split):
    images, labels = mnist[split]
    n = SIZES[split]
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == CLASS_COUNTS[split]
    assert images.min() == 0 and images.max() == 255


def test_real_binarize(mnist):
    images = mnist["test"][0]
    hard = binarize(images, "threshold")
    assert hard.dtype == np.float64 and hard.shape == images.shape
    assert set(np.unique(hard).tolist()) == {0.0, 1.0}
    assert 0.1 < hard.mean() < 0.2

    soft = binarize(images, "stochastic", seed=0)
    assert set(np.unique(soft).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(soft, binarize(images, "stochastic", seed=0))
    assert not np.array_equal(soft, binarize(images, "stochastic", seed=1))
    # 7.8M Bernoulli draws: the standard error of the mean is about 1e-4.
    assert abs(soft.mean() - (images / 255.0).mean()) < 1e-3


def test_real_load_binary_mnist(mnist):
    train, test, train_labels, test_labels = load_binary_mnist(MNIST_ROOT, "threshold")
    assert train.shape == (60000, 1, 28, 28) and test.shape == (10000, 1, 28, 28)
    assert train.dtype == np.float64 and test.dtype == np.float64
    np.testing.assert_array_equal(test[:, 0], binarize(mnist["test"][0], "threshold"))
    np.testing.assert_array_equal(train_labels, mnist["train"][1])
    np.testing.assert_array_equal(test_labels, mnist["test"][1])


# ---------------------------------------------------------------- read_idx round trips


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_read_idx_round_trip(tmp_path, dtype, compress):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 4, 5)) * 100).astype(dtype)
    out = read_idx(write(tmp_path / "x.idx", idx_bytes(x), compress))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (3, 4, 5) and out.flags.writeable
    np.testing.assert_array_equal(out, x)


def test_read_idx_one_dimension(tmp_path):
    out = read_idx(write(tmp_path / "l.idx", idx_bytes(np.arange(7, dtype=np.uint8)), True))
    assert out.shape == (7,)
    np.testing.assert_array_equal(out, np.arange(7))


def test_read_idx_gzip_by_content_not_name(tmp_path):
    x = small_images(2)
    raw_named_gz = write(tmp_path / "raw.gz", idx_bytes(x), compress=False)
    gz_named_raw = write(tmp_path / "gz.idx", idx_bytes(x), compress=True)
    np.testing.assert_array_equal(read_idx(raw_named_gz), x)
    np.testing.assert_array_equal(read_idx(gz_named_raw), x)


# ---------------------------------------------------------------- malformed files


@pytest.mark.parametrize("compress", [True, False])
def test_bad_magic(tmp_path, compress):
    data = bytearray(idx_bytes(small_images(1)))
    data[0] = 0x01
    msg = data_error(write(tmp_path / "x.idx", bytes(data), compress))
    assert "two zero bytes" in msg


def test_unknown_type_code(tmp_path):
    path = write(tmp_path / "x.idx", idx_bytes(small_images(1), code=0x07), True)
    assert "0x07" in data_error(path)


def test_zero_dimensions(tmp_path):
    path = write(tmp_path / "x.idx", struct.pack(">BBBB", 0, 0, 0x08, 0), False)
    assert "0 dimensions" in data_error(path)


def test_truncated_header(tmp_path):
    path = write(tmp_path / "x.idx", struct.pack(">BBBBII", 0, 0, 0x08, 3, 5, 28), False)
    assert "truncated IDX header" in data_error(path)


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_data(tmp_path, compress):
    path = write(tmp_path / "x.idx", idx_bytes(small_images(2))[:-10], compress)
    msg = data_error(path)
    assert "truncated" in msg and str(2 * 784) in msg and str(2 * 784 - 10) in msg


def test_truncated_wide_type(tmp_path):
    path = write(tmp_path / "x.idx", idx_bytes(np.arange(6, dtype=np.int32))[:-1], False)
    msg = data_error(path)
    assert "24" in msg and "23" in msg


@pytest.mark.parametrize("compress", [True, False])
def test_trailing_bytes(tmp_path, compress):
    path = write(tmp_path / "x.idx", idx_bytes(small_images(2)) + b"\x00\x01\x02", compress)
    assert "3 trailing bytes" in data_error(path)


def test_truncated_gzip_stream(tmp_path):
    blob = gzip.compress(idx_bytes(small_images(3)))
    path = tmp_path / "x.idx.gz"
    path.write_bytes(blob[: len(blob) // 2])
    assert "gzip" in data_error(path)


def test_gzip_bad_crc(tmp_path):
    blob = bytearray(gzip.compress(idx_bytes(small_images(3))))
    blob[-8] ^= 0xFF  # the CRC-32 is the trailer's first four bytes
    path = tmp_path / "x.idx.gz"
    path.write_bytes(bytes(blob))
    assert "gzip" in data_error(path)


def test_gzip_corrupt_deflate(tmp_path):
    blob = bytearray(gzip.compress(idx_bytes(small_images(3))))
    blob[12:40] = b"\xff" * 28
    path = tmp_path / "x.idx.gz"
    path.write_bytes(bytes(blob))
    assert "gzip" in data_error(path)


def test_gzip_only_magic(tmp_path):
    path = write(tmp_path / "x.gz", b"\x1f\x8b", False)
    data_error(path)


@pytest.mark.parametrize("compress", [True, False])
def test_empty_file(tmp_path, compress):
    path = write(tmp_path / "x.idx", b"", compress)
    assert "empty" in data_error(path)


def test_shorter_than_magic(tmp_path):
    data_error(write(tmp_path / "x.idx", b"\x00\x00", False))


def test_missing_file(tmp_path):
    assert "not found" in data_error(tmp_path / "absent.idx")


def test_directory_is_not_a_file(tmp_path):
    assert "not a regular file" in data_error(tmp_path)


# ---------------------------------------------------------------- load_mnist


def test_load_mnist_round_trip(tmp_path):
    images, labels = small_images(5), np.array([3, 1, 4, 1, 5])
    write_mnist(tmp_path, "train", images, labels)
    write_mnist(tmp_path, "test", images[:2], labels[:2])
    out_images, out_labels = load_mnist(tmp_path, "train")
    assert out_images.dtype == np.uint8 and out_labels.dtype == np.int64
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_labels, labels)
    test_images, test_labels = load_mnist(str(tmp_path), "test")
    assert test_images.shape == (2, 28, 28)
    np.testing.assert_array_equal(test_labels, labels[:2])


@pytest.mark.parametrize(
    "names, compress",
    [
        (("train-images.idx3-ubyte.gz", "train-labels.idx1-ubyte.gz"), True),
        (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), False),
        (("train-images.idx3-ubyte", "train-labels.idx1-ubyte"), False),
    ],
)
def test_load_mnist_other_names(tmp_path, names, compress):
    images, labels = small_images(5), np.arange(5)
    write_mnist(tmp_path, "train", images, labels, names=names, compress=compress)
    out_images, out_labels = load_mnist(tmp_path, "train")
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_labels, labels)


def test_load_mnist_prefers_canonical_name(tmp_path):
    write_mnist(tmp_path, "train", small_images(5, seed=1), np.arange(5))
    write_mnist(
        tmp_path, "train", small_images(5, seed=2), np.arange(5),
        names=("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), compress=False,
    )
    np.testing.assert_array_equal(load_mnist(tmp_path, "train")[0], small_images(5, seed=1))


def test_load_mnist_missing_file(tmp_path):
    write(tmp_path / MNIST_FILES["train"][0], idx_bytes(small_images(5)), True)
    msg = data_error(tmp_path, load_mnist, "train")
    assert MNIST_FILES["train"][1] in msg and "data.root" in msg


def test_load_mnist_missing_root(tmp_path):
    msg = data_error(tmp_path / "nowhere", load_mnist, "test")
    assert "data.root" in msg


def test_load_mnist_root_is_a_file(tmp_path):
    path = write(tmp_path / "file", b"x", False)
    assert "data.root" in data_error(path, load_mnist, "test")


def test_load_mnist_count_mismatch(tmp_path):
    write_mnist(tmp_path, "train", small_images(5), np.arange(4))
    labels_path = tmp_path / MNIST_FILES["train"][1]
    msg = error_message(DataError, load_mnist, tmp_path, "train")
    assert msg.startswith(str(labels_path)) and "4 labels" in msg and "5 images" in msg


def test_load_mnist_label_out_of_range(tmp_path):
    write_mnist(tmp_path, "train", small_images(5), [0, 1, 10, 2, 3])
    msg = error_message(DataError, load_mnist, tmp_path, "train")
    assert msg.startswith(str(tmp_path / MNIST_FILES["train"][1])) and "index 2" in msg


def test_load_mnist_wrong_image_size(tmp_path):
    write_mnist(tmp_path, "train", np.zeros((5, 27, 28), np.uint8), np.arange(5))
    msg = error_message(DataError, load_mnist, tmp_path, "train")
    assert msg.startswith(str(tmp_path / MNIST_FILES["train"][0])) and "(5, 27, 28)" in msg


def test_load_mnist_wrong_image_type(tmp_path):
    write_mnist(tmp_path, "train", small_images(5).astype(np.float32), np.arange(5))
    msg = error_message(DataError, load_mnist, tmp_path, "train")
    assert msg.startswith(str(tmp_path / MNIST_FILES["train"][0])) and "float32" in msg


def test_load_mnist_files_swapped(tmp_path):
    images_name, labels_name = MNIST_FILES["train"]
    write_mnist(tmp_path, "train", small_images(5), np.arange(5), names=(labels_name, images_name))
    msg = error_message(DataError, load_mnist, tmp_path, "train")
    assert msg.startswith(str(tmp_path / images_name))


def test_load_mnist_malformed_file_names_it(tmp_path):
    write_mnist(tmp_path, "test", small_images(5), np.arange(5))
    images_path = tmp_path / MNIST_FILES["test"][0]
    images_path.write_bytes(gzip.compress(idx_bytes(small_images(5))[:-1]))
    msg = error_message(DataError, load_mnist, tmp_path, "test")
    assert msg.startswith(str(images_path)) and "truncated" in msg


def test_load_mnist_unknown_split(tmp_path):
    assert "train" in error_message(ConfigError, load_mnist, tmp_path, "validation")


# ---------------------------------------------------------------- binarisation


def test_threshold_boundary():
    x = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(binarize(x, "threshold"), [[0.0, 0.0, 1.0, 1.0]])


def test_stochastic_extremes_and_rate():
    x = np.array([0, 255, 64], dtype=np.uint8).repeat(20000).reshape(3, 20000)
    out = binarize(x, "stochastic", seed=5)
    assert out.dtype == np.float64 and out.shape == x.shape
    assert (out[0] == 0).all() and (out[1] == 1).all()
    assert abs(out[2].mean() - 64 / 255) < 0.015  # about 5 standard errors


def test_unknown_binarize_method():
    msg = error_message(ConfigError, binarize, small_images(1), "otsu")
    assert "otsu" in msg and "threshold" in msg and "stochastic" in msg


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seed(seed):
    error_message(ConfigError, binarize, small_images(1), "stochastic", seed)


def test_binarize_needs_uint8():
    error_message(DataError, binarize, small_images(1) / 255.0, "threshold")


def test_load_binary_mnist_synthetic(tmp_path):
    # Identical mid-grey train and test sets: only the seeds can tell them apart.
    images = np.full((5, 28, 28), 128, dtype=np.uint8)
    write_mnist(tmp_path, "train", images, np.arange(5))
    write_mnist(tmp_path, "test", images, np.arange(5))
    train, test, train_labels, test_labels = load_binary_mnist(tmp_path, "stochastic", seed=3)
    assert train.shape == (5, 1, 28, 28) and test.shape == (5, 1, 28, 28)
    assert train.dtype == np.float64 and test_labels.dtype == np.int64
    assert not np.array_equal(train, test)
    np.testing.assert_array_equal(train[:, 0], binarize(images, "stochastic", seed=3))
    again = load_binary_mnist(tmp_path, "stochastic", seed=3)
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], test)
    hard_train, hard_test, _, _ = load_binary_mnist(tmp_path, "threshold")
    assert (hard_train == 1).all() and (hard_test == 1).all()


def test_load_binary_mnist_checks_method_before_reading(tmp_path):
    # The folder does not exist: a ConfigError shows the method was checked first.
    error_message(ConfigError, load_binary_mnist, tmp_path / "nowhere", "otsu")
    error_message(ConfigError, load_binary_mnist, tmp_path / "nowhere", "stochastic", -1)
