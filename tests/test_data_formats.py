"""CIFAR-10 python batches, image folders, and the dead-leaves generator."""

import math
import os
import pickle
import re
import struct

import numpy as np
import pytest
from PIL import Image

from thermodiff.data import deadleaves as dl
from thermodiff.data.cifar import CIFAR10_FILES, load_cifar10, read_cifar_batch
from thermodiff.data.deadleaves import deadleaves, paint_disks, sample_radii
from thermodiff.data.imagefolder import load_image_folder
from thermodiff.errors import ConfigError, DataError


def error_message(exc_type, fn, *args, **kwargs):
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def data_error(path, fn, *args):
    """The DataError message of fn(path, *args): one line, starting with the path."""
    msg = error_message(DataError, fn, path, *args)
    assert msg.startswith(str(path)), msg
    return msg


# ================================================================ CIFAR-10


def cifar_data(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def cifar_dict(data, labels, name=b"training batch 1 of 5"):
    return {
        b"batch_label": name,
        b"labels": list(labels),
        b"data": data,
        b"filenames": [b"img_%d.png" % k for k in range(len(labels))],
    }


def write_pickle(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def write_batch(path, n=4, seed=0, labels=None):
    data = cifar_data(n, seed)
    labels = list(np.random.default_rng(seed).integers(0, 10, n).tolist()) if labels is None else labels
    write_pickle(path, cifar_dict(data, labels))
    return data, labels


class _Py2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 str (BINSTRING), as the published batches are."""

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


class _Exploit:
    """Unpickling this would call os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_batch_round_trip_layout(tmp_path):
    data, labels = write_batch(tmp_path / "data_batch_1", n=5)
    images, out_labels = read_cifar_batch(tmp_path / "data_batch_1")
    assert images.shape == (5, 3, 32, 32) and images.dtype == np.uint8
    assert out_labels.shape == (5,) and out_labels.dtype == np.int64
    np.testing.assert_array_equal(out_labels, labels)
    # image[c, i, j] == data[k, c*1024 + i*32 + j], element by element.
    k, c, i, j = np.meshgrid(range(5), range(3), range(32), range(32), indexing="ij")
    np.testing.assert_array_equal(images, data[k, c * 1024 + i * 32 + j])
    assert images.flags.c_contiguous and images.flags.writeable


def test_cifar_channel_planes(tmp_path):
    # Red plane 10, green 20, blue 30, with a marker at row 1, column 2 of green.
    data = np.repeat(np.array([10, 20, 30], np.uint8), 1024)[None].copy()
    data[0, 1024 + 1 * 32 + 2] = 99
    write_pickle(tmp_path / "b", cifar_dict(data, [7]))
    images, labels = read_cifar_batch(tmp_path / "b")
    assert (images[0, 0] == 10).all() and (images[0, 2] == 30).all()
    assert images[0, 1, 1, 2] == 99 and (images[0, 1] == 20).sum() == 1023
    assert labels.tolist() == [7]


def test_cifar_python2_style_pickle(tmp_path):
    # As the published files: bytes as BINSTRING, numpy 1's module path.
    data, labels = cifar_data(3, seed=4), [0, 9, 5]
    path = tmp_path / "test_batch"
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(cifar_dict(data, labels, b"testing batch 1 of 1"))
    raw = path.read_bytes()
    assert b"_codecs" not in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    images, out_labels = read_cifar_batch(path)
    np.testing.assert_array_equal(images.reshape(3, -1), data)
    assert out_labels.tolist() == labels


def test_cifar_str_keys(tmp_path):
    data = cifar_data(2)
    write_pickle(tmp_path / "b", {"data": data, "labels": [1, 2]}, protocol=4)
    images, labels = read_cifar_batch(tmp_path / "b")
    np.testing.assert_array_equal(images.reshape(2, -1), data)


def test_cifar_malicious_pickle_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = write_pickle(tmp_path / "data_batch_1", cifar_dict(cifar_data(1), [_Exploit(marker)]))
    msg = data_error(path, read_cifar_batch)
    assert f"refuses to load pickled object {os.system.__module__}.system" in msg
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_cifar_refuses_other_globals(tmp_path, protocol):
    path = write_pickle(tmp_path / "b", {b"data": cifar_data(1), b"labels": [1], b"x": {1, 2}}, protocol)
    # Protocols below 3 name builtins by their Python 2 module; below 4, sets are
    # pickled as a call of set.
    builtins = "builtins" if protocol >= 3 else "__builtin__"
    if protocol < 4:
        assert f"refuses to load pickled object {builtins}.set" in data_error(path, read_cifar_batch)
    path = write_pickle(tmp_path / "c", [eval], protocol)
    assert f"refuses to load pickled object {builtins}.eval" in data_error(path, read_cifar_batch)


def test_cifar_refuses_bytes_with_arguments(tmp_path):
    # b"" at protocol 2 is a call of bytes(); bytes(n) would allocate n bytes.
    path = write_pickle(tmp_path / "b", {b"data": b"", b"labels": []})
    # GLOBAL bytes, BINPUT, EMPTY_TUPLE, REDUCE -> the same with the tuple (5,).
    raw, count = re.subn(rb"(bytes\nq.)\)R", lambda m: m.group(1) + b"K\x05\x85R", path.read_bytes())
    assert count == 1
    path.write_bytes(raw)
    assert "bytes() with arguments" in data_error(path, read_cifar_batch)


def test_cifar_refuses_other_codecs(tmp_path):
    path = write_pickle(tmp_path / "b", cifar_dict(cifar_data(1), [1]))
    raw = path.read_bytes()
    assert b"latin1" in raw
    path.write_bytes(raw.replace(b"latin1", b"utf_16"))
    assert "_codecs.encode" in data_error(path, read_cifar_batch)


def test_cifar_truncated(tmp_path):
    path = write_pickle(tmp_path / "b", cifar_dict(cifar_data(3), [1, 2, 3]))
    raw = path.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 1, 10):
        path.write_bytes(raw[:cut])
        assert "pickle" in data_error(path, read_cifar_batch)


def test_cifar_trailing_bytes(tmp_path):
    path = write_pickle(tmp_path / "b", cifar_dict(cifar_data(1), [1]))
    path.write_bytes(path.read_bytes() + b"xyz")
    assert "3 trailing bytes" in data_error(path, read_cifar_batch)


def test_cifar_not_a_pickle(tmp_path):
    path = tmp_path / "b"
    path.write_bytes(b"this is not a pickle at all")
    data_error(path, read_cifar_batch)


def test_cifar_empty_and_missing(tmp_path):
    path = tmp_path / "b"
    path.write_bytes(b"")
    assert "empty" in data_error(path, read_cifar_batch)
    assert "not found" in data_error(tmp_path / "absent", read_cifar_batch)
    assert "not a regular file" in data_error(tmp_path, read_cifar_batch)


def test_cifar_not_a_dict(tmp_path):
    path = write_pickle(tmp_path / "b", [1, 2, 3])
    assert "dict" in data_error(path, read_cifar_batch)


@pytest.mark.parametrize("key", [b"data", b"labels"])
def test_cifar_missing_key(tmp_path, key):
    batch = cifar_dict(cifar_data(2), [1, 2])
    del batch[key]
    path = write_pickle(tmp_path / "b", batch)
    assert key.decode() in data_error(path, read_cifar_batch)


def test_cifar_wrong_column_count(tmp_path):
    path = write_pickle(tmp_path / "b", cifar_dict(np.zeros((2, 3071), np.uint8), [1, 2]))
    assert "(2, 3071)" in data_error(path, read_cifar_batch)


def test_cifar_wrong_dtype(tmp_path):
    path = write_pickle(tmp_path / "b", cifar_dict(cifar_data(2).astype(np.float32), [1, 2]))
    assert "float32" in data_error(path, read_cifar_batch)


def test_cifar_data_not_an_array(tmp_path):
    path = write_pickle(tmp_path / "b", cifar_dict([b"\x00" * 3072], [1]))
    assert "numpy array" in data_error(path, read_cifar_batch)


def test_cifar_no_images(tmp_path):
    path = write_pickle(tmp_path / "b", cifar_dict(np.zeros((0, 3072), np.uint8), []))
    assert "no images" in data_error(path, read_cifar_batch)


@pytest.mark.parametrize("labels", [[0, 1, 10], [0, -1, 2]])
def test_cifar_labels_out_of_range(tmp_path, labels):
    path = write_pickle(tmp_path / "b", cifar_dict(cifar_data(3), labels))
    msg = data_error(path, read_cifar_batch)
    assert "outside 0..9" in msg and "index" in msg


def test_cifar_label_count_mismatch(tmp_path):
    path = write_pickle(tmp_path / "b", cifar_dict(cifar_data(3), [1, 2]))
    assert "2 labels for 3 images" in data_error(path, read_cifar_batch)


@pytest.mark.parametrize("labels", [[1.0, 2.0], ["a", "b"], [True, False]])
def test_cifar_labels_not_integers(tmp_path, labels):
    path = write_pickle(tmp_path / "b", cifar_dict(cifar_data(2), labels))
    assert "integers" in data_error(path, read_cifar_batch)


@pytest.mark.parametrize("subfolder", [False, True])
def test_load_cifar10_splits(tmp_path, subfolder):
    folder = tmp_path / "cifar-10-batches-py" if subfolder else tmp_path
    folder.mkdir(exist_ok=True)
    written = [write_batch(folder / name, n=2, seed=k) for k, name in enumerate(CIFAR10_FILES["train"])]
    test_data, test_labels = write_batch(folder / "test_batch", n=3, seed=9)
    images, labels = load_cifar10(tmp_path, "train")
    assert images.shape == (10, 3, 32, 32) and labels.dtype == np.int64
    # Concatenated in order data_batch_1 .. data_batch_5.
    np.testing.assert_array_equal(images.reshape(10, -1), np.concatenate([d for d, _ in written]))
    assert labels.tolist() == sum((l for _, l in written), [])
    images, labels = load_cifar10(str(tmp_path), "test")
    np.testing.assert_array_equal(images.reshape(3, -1), test_data)
    assert labels.tolist() == test_labels


def test_load_cifar10_missing_batch(tmp_path):
    for name in CIFAR10_FILES["train"][:3]:
        write_batch(tmp_path / name)
    msg = data_error(tmp_path, load_cifar10, "train")
    assert "data_batch_4" in msg and "data.root" in msg


def test_load_cifar10_no_batches(tmp_path):
    msg = data_error(tmp_path, load_cifar10, "test")
    assert "test_batch" in msg and "cifar-10-batches-py" in msg
    assert "data.root" in data_error(tmp_path / "nowhere", load_cifar10, "test")


def test_load_cifar10_bad_batch_names_it(tmp_path):
    write_batch(tmp_path / "test_batch", labels=[0, 1, 2, 11])
    msg = error_message(DataError, load_cifar10, tmp_path, "test")
    assert msg.startswith(str(tmp_path / "test_batch"))


def test_load_cifar10_unknown_split(tmp_path):
    assert "train" in error_message(ConfigError, load_cifar10, tmp_path, "validation")


# ================================================================ image folders


def save(path, array, **kwargs):
    """Save an array with Pillow; the mode follows from its shape and dtype."""
    Image.fromarray(array).save(path, **kwargs)
    return path


def pixels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_folder_grey_png_exact_and_sorted(tmp_path):
    arrays = {"b.png": pixels((6, 5), 1), "a.png": pixels((6, 5), 2), "c.PNG": pixels((6, 5), 3)}
    for name, arr in arrays.items():
        save(tmp_path / name, arr)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    save(tmp_path / "sub" / "d.png", pixels((9, 9)))  # subfolders are not read
    images, names = load_image_folder(tmp_path)
    assert names == ["a.png", "b.png", "c.PNG"]
    assert images.shape == (3, 1, 6, 5) and images.dtype == np.uint8
    for k, name in enumerate(names):
        np.testing.assert_array_equal(images[k, 0], arrays[name])


def test_folder_sorted_by_name_not_case_folded(tmp_path):
    for name in ("b.png", "B.png", "a.png"):
        save(tmp_path / name, pixels((2, 2)))
    assert load_image_folder(tmp_path)[1] == ["B.png", "a.png", "b.png"]


def test_folder_rgb_png_layout(tmp_path):
    a, b = pixels((4, 7, 3), 1), pixels((4, 7, 3), 2)
    save(tmp_path / "x1.png", a)
    save(tmp_path / "x2.png", b)
    images, names = load_image_folder(tmp_path)
    assert images.shape == (2, 3, 4, 7) and images.flags.c_contiguous
    # images[k, c, i, j] == pixel (row i, column j), channel c.
    np.testing.assert_array_equal(images[0], a.transpose(2, 0, 1))
    np.testing.assert_array_equal(images[1], b.transpose(2, 0, 1))


@pytest.mark.parametrize("mode, channels", [("LA", 2), ("RGBA", 4)])
def test_folder_alpha_modes(tmp_path, mode, channels):
    arr = pixels((3, 3, channels))
    save(tmp_path / "a.png", arr)
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == mode
    images, _ = load_image_folder(tmp_path)
    assert images.shape == (1, channels, 3, 3)
    np.testing.assert_array_equal(images[0], arr.transpose(2, 0, 1))


def test_folder_palette_becomes_rgb(tmp_path):
    im = Image.new("P", (3, 2))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 9))
    im.putdata([0, 1, 2, 2, 1, 0])
    im.save(tmp_path / "p.png")
    save(tmp_path / "q.png", pixels((2, 3, 3)))  # a palette image counts as RGB
    images, _ = load_image_folder(tmp_path)
    assert images.shape == (2, 3, 2, 3)
    red, green, blue = [255, 0, 0], [0, 255, 0], [0, 0, 255]
    expected = np.array([[red, green, blue], [blue, green, red]], np.uint8)
    np.testing.assert_array_equal(images[0], expected.transpose(2, 0, 1))


def test_folder_jpeg(tmp_path):
    colour = np.array([200, 40, 90], np.uint8)
    save(tmp_path / "a.jpg", np.broadcast_to(colour, (16, 24, 3)).copy(), quality=95)
    save(tmp_path / "b.JPEG", np.broadcast_to(colour, (16, 24, 3)).copy(), quality=95)
    images, names = load_image_folder(tmp_path)
    assert names == ["a.jpg", "b.JPEG"] and images.shape == (2, 3, 16, 24)
    # Lossy: close to the colour, not exactly it.
    assert np.abs(images.astype(int) - colour[None, :, None, None]).max() <= 4


def test_folder_two_sizes_each_load(tmp_path):
    for size, folder in (((8, 8), tmp_path / "small"), ((12, 10), tmp_path / "large")):
        folder.mkdir()
        save(folder / "a.png", pixels(size))
        assert load_image_folder(folder)[0].shape == (1, 1, *size)


def test_folder_size_mismatch(tmp_path):
    save(tmp_path / "a.png", pixels((32, 32, 3)))
    save(tmp_path / "b.png", pixels((28, 28)))
    msg = data_error(tmp_path / "b.png", lambda p: load_image_folder(p.parent))
    assert "28x28 L" in msg and "a.png is 32x32 RGB" in msg


def test_folder_size_mismatch_same_mode(tmp_path):
    save(tmp_path / "a.png", pixels((4, 6)))
    save(tmp_path / "b.png", pixels((6, 4)))
    msg = data_error(tmp_path / "b.png", lambda p: load_image_folder(p.parent))
    assert "4x6 L" in msg and "a.png is 6x4 L" in msg


def test_folder_mode_mismatch(tmp_path):
    save(tmp_path / "a.png", pixels((5, 5)))
    save(tmp_path / "b.png", pixels((5, 5, 3)))
    msg = data_error(tmp_path / "b.png", lambda p: load_image_folder(p.parent))
    assert "5x5 RGB" in msg and "a.png is 5x5 L" in msg


def test_folder_16_bit_refused(tmp_path):
    path = save(tmp_path / "deep.png", (np.arange(16, dtype=np.uint16) * 4000).reshape(4, 4))
    msg = data_error(path, lambda p: load_image_folder(p.parent))
    assert "I;16" in msg


def test_folder_bilevel_refused(tmp_path):
    path = tmp_path / "bits.png"
    Image.new("1", (4, 4)).save(path)
    assert "'1'" in data_error(path, lambda p: load_image_folder(p.parent))


def test_folder_not_an_image(tmp_path):
    path = tmp_path / "fake.png"
    path.write_bytes(b"definitely not a png")
    assert "cannot read image" in data_error(path, lambda p: load_image_folder(p.parent))


def test_folder_truncated_png(tmp_path):
    save(tmp_path / "a.png", pixels((20, 20)))
    path = save(tmp_path / "b.png", pixels((20, 20), 1))
    path.write_bytes(path.read_bytes()[:-60])
    assert "cannot read image" in data_error(path, lambda p: load_image_folder(p.parent))


def test_folder_empty(tmp_path):
    assert "no images" in data_error(tmp_path, load_image_folder)
    (tmp_path / "readme.txt").write_text("x")
    assert "no images" in data_error(tmp_path, load_image_folder)


def test_folder_missing(tmp_path):
    assert "not found" in data_error(tmp_path / "nowhere", load_image_folder)
    (tmp_path / "file.png").write_bytes(b"x")
    assert "not a folder" in data_error(tmp_path / "file.png", load_image_folder)


# ================================================================ dead leaves


def test_deadleaves_shape_range_covered():
    x = deadleaves(6, size=20, seed=3)
    assert x.shape == (6, 1, 20, 20) and x.dtype == np.float64
    # NaN is the unpainted sentinel: every pixel must have been painted.
    assert not np.isnan(x).any()
    assert x.min() >= 0.0 and x.max() < 1.0
    # Occluding disks: far fewer distinct values than pixels, yet more than one.
    assert all(1 < len(np.unique(img)) < 400 for img in x)


def test_deadleaves_default_size():
    assert deadleaves(1).shape == (1, 1, 32, 32)
    assert deadleaves(0).shape == (0, 1, 32, 32)


def test_deadleaves_deterministic_in_seed():
    a = deadleaves(4, size=16, seed=11)
    np.testing.assert_array_equal(a, deadleaves(4, size=16, seed=11))
    b = deadleaves(4, size=16, seed=12)
    assert not np.array_equal(a, b)
    assert all(not np.array_equal(a[k], b[k]) for k in range(4))
    assert not np.array_equal(a[0], a[1])
    # The first m images do not depend on n.
    np.testing.assert_array_equal(deadleaves(2, size=16, seed=11), a[:2])


def test_deadleaves_independent_of_batch(monkeypatch):
    a = deadleaves(3, size=16, seed=5)
    monkeypatch.setattr(dl, "_BATCH", 7)
    np.testing.assert_array_equal(deadleaves(3, size=16, seed=5), a)


def test_deadleaves_is_back_to_front_painting():
    # Front-to-back drawing equals painting the same disks back to front.
    size, r_max, count = 16, 8.0, 4000
    for seed in (0, 1):
        image = deadleaves(1, size=size, seed=seed, n_disks=count)[0, 0]  # covered within count disks
        rng = np.random.default_rng(seed).spawn(1)[0]
        r, cy, cx, value = dl._draw_disks(rng, count, size, 1.0, r_max, 3.0)
        assert (cy.min() < 0 < size < cy.max()) and (r.max() > 4)
        painted = paint_disks(size, np.stack([cy, cx], 1)[::-1], r[::-1], value[::-1])
        np.testing.assert_array_equal(painted, image)


def test_paint_disks_later_disk_on_top():
    # Disk A (value 0.2) left, disk B (value 0.8) right, overlapping in the middle.
    centres, radii = [(3.5, 2.5), (3.5, 5.5)], [2.0, 2.0]
    image = paint_disks(8, centres, radii, [0.2, 0.8])
    assert image[3, 2] == 0.2 and image[3, 5] == 0.8
    assert image[3, 4] == 0.8 and image[3, 3] == 0.8  # overlap: B, painted later, is on top
    assert np.isnan(image[0, 7]) and np.isnan(image[7, 0])  # no disk there
    swapped = paint_disks(8, centres[::-1], radii[::-1], [0.8, 0.2])
    assert swapped[3, 3] == 0.2 and swapped[3, 4] == 0.2  # now A is on top
    assert swapped[3, 6] == 0.8
    # A pixel is covered when its centre is within the radius, boundary included.
    edge = paint_disks(3, [(1.5, 0.5)], [1.0], [0.5])
    assert edge[0, 0] == 0.5 and edge[1, 1] == 0.5 and np.isnan(edge[0, 1])


def truncated_power_law_moment(k, a, b, alpha):
    """E[r^k] for p(r) proportional to r^-alpha on [a, b]."""

    def integral(p):  # integral of r^p over [a, b]
        return math.log(b / a) if p == -1 else (b ** (p + 1) - a ** (p + 1)) / (p + 1)

    return integral(k - alpha) / integral(-alpha)


@pytest.mark.parametrize("alpha", [3.0, 1.0, 2.0, 0.5, 4.5])
def test_sample_radii_power_law(alpha):
    a, b, n = 1.0, 16.0, 200_000
    r = sample_radii(np.random.default_rng(0), n, a, b, alpha)
    assert r.shape == (n,) and r.min() >= a and r.max() <= b
    mean = truncated_power_law_moment(1, a, b, alpha)
    sd = math.sqrt(truncated_power_law_moment(2, a, b, alpha) - mean**2)
    assert abs(r.mean() - mean) < 4 * sd / math.sqrt(n)
    # The median too: the CDF at the sample median is 1/2 within its standard error.
    f = truncated_power_law_cdf(float(np.median(r)), a, b, alpha)
    assert abs(f - 0.5) < 4 * 0.5 / math.sqrt(n)


def truncated_power_law_cdf(x, a, b, alpha):
    if alpha == 1.0:
        return math.log(x / a) / math.log(b / a)
    return (x ** (1 - alpha) - a ** (1 - alpha)) / (b ** (1 - alpha) - a ** (1 - alpha))


def test_sample_radii_degenerate_range():
    np.testing.assert_array_equal(sample_radii(np.random.default_rng(0), 5, 2.0, 2.0, 3.0), 2.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"r_min": 0.0},
        {"r_min": -1.0},
        {"r_min": 5.0, "r_max": 4.0},
        {"alpha": float("nan")},
        {"size": 0},
        {"seed": -1},
        {"n_disks": 0},
        {"n": 1.5},
    ],
)
def test_deadleaves_bad_parameters(kwargs):
    args = {"n": 1, "size": 8, **kwargs}
    msg = error_message(ConfigError, deadleaves, **args)
    assert msg.startswith("deadleaves:")


def test_deadleaves_too_few_disks():
    msg = error_message(ConfigError, deadleaves, 1, size=16, n_disks=5)
    assert "uncovered" in msg and "n_disks" in msg
