"""Loading, saving and splitting data arrays."""

import os

import numpy as np
import pytest

from thermodiff.data import arrays
from thermodiff.data.arrays import load_array, save_array, split_holdout
from thermodiff.errors import DataError


@pytest.fixture
def data():
    return np.random.default_rng(0).normal(size=(17, 3)) * 1e3


def _raises_naming(path, match=None):
    """DataError whose one-line message names the file."""

    class _Ctx:
        def __enter__(self):
            self.ctx = pytest.raises(DataError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            msg = str(self.info.value)
            assert str(path) in msg
            assert "\n" not in msg
            return handled

    return _Ctx()


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", [".npy", ".npz", ".csv", ".txt"])
def test_round_trip(tmp_path, data, ext):
    path = tmp_path / f"d{ext}"
    save_array(path, data)
    out = load_array(path)
    assert out.dtype == np.float64 and out.shape == data.shape
    np.testing.assert_array_equal(out, data)  # text formats use 17 digits: exact


@pytest.mark.parametrize("ext", [".npy", ".npz"])
def test_round_trip_images(tmp_path, ext):
    x = np.random.default_rng(1).integers(0, 256, size=(5, 4, 3)).astype(np.uint8)
    save_array(tmp_path / f"im{ext}", x)
    out = load_array(tmp_path / f"im{ext}")
    assert out.shape == (5, 4, 3) and out.dtype == np.float64
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("ext", [".npy", ".npz", ".csv"])
def test_one_dimensional_becomes_column(tmp_path, ext):
    path = tmp_path / f"v{ext}"
    save_array(path, np.arange(6.0))
    out = load_array(path)
    assert out.shape == (6, 1)
    np.testing.assert_array_equal(out[:, 0], np.arange(6.0))


def test_str_path_and_int_dtype(tmp_path):
    path = tmp_path / "i.npy"
    np.save(path, np.arange(6).reshape(3, 2))
    out = load_array(str(path))
    assert out.dtype == np.float64 and out.tolist() == [[0, 1], [2, 3], [4, 5]]


# ---------------------------------------------------------------- csv details


def test_csv_header_blank_lines_and_spaces(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("x, y\n\n1.5, -2\n   \n3e2,4\n\n")
    out = load_array(path)
    np.testing.assert_array_equal(out, [[1.5, -2.0], [300.0, 4.0]])


def test_txt_whitespace_separated(tmp_path):
    path = tmp_path / "w.txt"
    np.savetxt(path, np.arange(6.0).reshape(3, 2))  # numpy's default: spaces
    np.testing.assert_array_equal(load_array(path), np.arange(6.0).reshape(3, 2))


def test_csv_ragged_row_names_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("a,b\n1,2\n\n3,4,5\n")
    with _raises_naming(path, match="line 4"):
        load_array(path)


def test_csv_non_numeric_cell_names_line(tmp_path):
    path = tmp_path / "n.csv"
    path.write_text("1,2\n3,oops\n")
    with _raises_naming(path, match="line 2") as info:
        load_array(path)
    assert "oops" in str(info.value)


def test_csv_empty_cell_names_line(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("1,2\n3,4\n5,\n")
    with _raises_naming(path, match="line 3"):
        load_array(path)


def test_csv_mixed_first_line_is_not_a_header(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("x,2\n3,4\n")
    with _raises_naming(path, match="line 1"):
        load_array(path)


@pytest.mark.parametrize("text", ["", "\n  \n", "x,y\n"])
def test_csv_without_data(tmp_path, text):
    path = tmp_path / "empty.csv"
    path.write_text(text)
    with _raises_naming(path):
        load_array(path)


def test_csv_not_utf8(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00\x81")
    with _raises_naming(path):
        load_array(path)


# ---------------------------------------------------------------- npz


def test_npz_key_choice(tmp_path, data):
    path = tmp_path / "k.npz"
    np.savez(path, labels=np.arange(17), data=data)
    np.testing.assert_array_equal(load_array(path), data)
    np.savez(path, labels=np.arange(17), x=data, data=data + 1)
    np.testing.assert_array_equal(load_array(path), data)


def test_npz_ambiguous_lists_keys(tmp_path, data):
    path = tmp_path / "amb.npz"
    np.savez(path, a=data, b=data)
    with _raises_naming(path) as info:
        load_array(path)
    assert "'a'" in str(info.value) and "'b'" in str(info.value)


def test_npz_no_arrays(tmp_path):
    path = tmp_path / "none.npz"
    np.savez(path)
    with _raises_naming(path, match="no arrays"):
        load_array(path)


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.npy"
    with _raises_naming(path, match="not found"):
        load_array(path)


@pytest.mark.parametrize("name", ["d.json", "d", "d.npy.gz"])
def test_unknown_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text("1")
    with _raises_naming(path, match="extension"):
        load_array(path)


@pytest.mark.parametrize("ext", [".npy", ".npz"])
def test_malformed_binary(tmp_path, ext):
    path = tmp_path / f"bad{ext}"
    path.write_bytes(b"this is not numpy data at all")
    with _raises_naming(path):
        load_array(path)


def test_truncated_npy(tmp_path, data):
    path = tmp_path / "trunc.npy"
    np.save(path, data)
    path.write_bytes(path.read_bytes()[:100])
    with _raises_naming(path):
        load_array(path)


@pytest.mark.parametrize("ext", [".npy", ".npz"])
def test_object_array_needs_pickle(tmp_path, ext):
    path = tmp_path / f"obj{ext}"
    obj = np.array([[1, "a"], [None, 2.0]], dtype=object)
    if ext == ".npy":
        np.save(path, obj, allow_pickle=True)
    else:
        np.savez(path, x=obj)
    with _raises_naming(path):
        load_array(path)


def test_npy_under_npz_name(tmp_path, data):
    path = tmp_path / "wrong.npz"
    with open(path, "wb") as f:
        np.save(f, data)
    with _raises_naming(path):
        load_array(path)


@pytest.mark.parametrize(
    "arr",
    [np.zeros((0, 3)), np.zeros((4, 0)), np.zeros(0), np.zeros((3, 0, 2))],
    ids=["N=0", "D=0", "1d-empty", "3d-empty"],
)
def test_empty_array(tmp_path, arr):
    path = tmp_path / "empty.npy"
    np.save(path, arr)
    with _raises_naming(path, match="empty"):
        load_array(path)


def test_scalar_array(tmp_path):
    path = tmp_path / "scalar.npy"
    np.save(path, np.float64(3.0))
    with _raises_naming(path, match="0-d"):
        load_array(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(tmp_path, data, bad):
    x = data.copy()
    x[5, 1] = bad
    x[9, 0] = bad
    x[9, 2] = bad
    path = tmp_path / "nan.npy"
    np.save(path, x)
    with _raises_naming(path) as info:
        load_array(path)
    msg = str(info.value)
    assert "3 NaN or inf" in msg and "row 5" in msg


def test_non_finite_in_csv(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text("1,2\n3,nan\n")
    with _raises_naming(path, match="row 1"):
        load_array(path)


@pytest.mark.parametrize(
    "arr",
    [np.array(["a", "b"]), np.array([1 + 2j, 3j]), np.zeros(3, dtype=[("a", "f8"), ("b", "i4")]), np.array(["2020-01-01"], dtype="datetime64[D]")],
    ids=["str", "complex", "structured", "datetime"],
)
def test_non_numeric_dtype(tmp_path, arr):
    path = tmp_path / "s.npy"
    np.save(path, arr)
    with _raises_naming(path, match="dtype"):
        load_array(path)


# ---------------------------------------------------------------- split


def test_split_holdout(data):
    x = np.arange(100.0)[:, None]
    train, test = split_holdout(x, 0.2, seed=3)
    assert train.shape == (80, 1) and test.shape == (20, 1)
    assert sorted(np.concatenate([train, test])[:, 0].tolist()) == x[:, 0].tolist()
    train2, test2 = split_holdout(x, 0.2, seed=3)
    np.testing.assert_array_equal(test, test2)
    _, test3 = split_holdout(x, 0.2, seed=4)
    assert not np.array_equal(test, test3)
    assert np.all(np.diff(train[:, 0]) > 0)  # each part keeps file order


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan"), 0.01, 0.99])
def test_split_holdout_bad_fraction(fraction):
    with pytest.raises(DataError):
        split_holdout(np.zeros((10, 2)), fraction, seed=0)


# ---------------------------------------------------------------- atomic save


def test_save_leaves_no_temp_file(tmp_path, data):
    for ext in (".npy", ".npz", ".csv"):
        save_array(tmp_path / f"a{ext}", data)
        save_array(tmp_path / f"a{ext}", data + 1)  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "a.npy", "a.npz"]
    np.testing.assert_array_equal(load_array(tmp_path / "a.npy"), data + 1)


def test_interrupted_save_keeps_old_file(tmp_path, data, monkeypatch):
    path = tmp_path / "keep.npy"
    save_array(path, data)

    def half_write(handle, ext, x):
        handle.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(arrays, "_write_payload", half_write)
    with pytest.raises(KeyboardInterrupt):
        save_array(path, data + 1)
    assert os.listdir(tmp_path) == ["keep.npy"]
    np.testing.assert_array_equal(load_array(path), data)


def test_save_errors(tmp_path, data):
    with _raises_naming(tmp_path / "x.json", match="extension"):
        save_array(tmp_path / "x.json", data)
    with _raises_naming(tmp_path / "missing" / "x.npy", match="directory"):
        save_array(tmp_path / "missing" / "x.npy", data)
    with _raises_naming(tmp_path / "img.csv"):
        save_array(tmp_path / "img.csv", np.zeros((2, 3, 4)))


def test_zip_with_non_npy_member(tmp_path):
    import zipfile

    path = tmp_path / "z.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", "hello")
    with _raises_naming(path, match="not a .npy array"):
        load_array(path)
