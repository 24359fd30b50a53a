"""Class-conditional models from the command line, end to end: labels given as strings
in a CSV column with a header train a conditional model, which samples by class name
(with guidance), evaluates both bounds and classifies; bad labels and classes are
one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import _one_line_error

NAMES = ("cat", "dog", "eel")
CENTRES = np.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.5]])


def _points(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return CENTRES[y] + 0.4 * rng.standard_normal((n, 2)), y


def _write_labels(path, y):
    path.write_text("animal\n" + "".join(f"{NAMES[k]}\n" for k in y))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    d = tmp_path_factory.mktemp("labelled")
    x, y = _points(1500, 0)
    np.save(d / "x.npy", x)
    _write_labels(d / "y.csv", y)
    xt, yt = _points(150, 1)
    np.save(d / "test.npy", xt)
    _write_labels(d / "test.csv", yt)
    return d


@pytest.fixture(scope="module")
def cond_run(labelled, run):
    out = labelled / "run"
    r = run("train", "--data", labelled / "x.npy", "--labels", labelled / "y.csv", "--out", out, "--steps", 600,
            "--set", "model.width=64", "--set", "model.depth=2", "--set", "train.batch_size=128",
            "--set", "train.lr=3e-3", "--set", "eval.n_t=8", "--set", "train.validate_every=0", timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def test_string_labels_train_a_conditional_model(cond_run):
    from thermodiff.config import load

    cfg = load(cond_run / "config.toml")
    assert cfg.model.num_classes == 3 and cfg.model.class_names == NAMES
    assert cfg.train.label_dropout == 0.1


def test_sample_by_class_name_with_guidance(cond_run, tmp_path, run):
    out = tmp_path / "dog.npy"
    r = run("sample", cond_run, "--class", "dog", "--guidance", "2", "-n", 300, "--out", out, "--steps", 50)
    assert r.returncode == 0, r.stderr
    x = np.load(out)
    assert x.shape == (300, 2)
    assert np.load(tmp_path / "dog_classes.npy").tolist() == [1] * 300
    assert (tmp_path / "dog.png").stat().st_size > 0
    # the dog's cluster, not the others'
    nearest = np.argmin(((x[:, None, :] - CENTRES[None]) ** 2).sum(-1), 1)
    assert (nearest == 1).mean() > 0.95
    # every class in one figure, and NFE doubled by guidance
    r = run("sample", cond_run, "--class", "all", "-n", 20, "--out", tmp_path / "all.npy", "--steps", 10,
            "--guidance", "1")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "all_classes.npy").tolist() == [0] * 20 + [1] * 20 + [2] * 20
    assert "NFE): 20" in r.stdout  # 10 hops of two rows each (the class and the null class)


def test_evaluate_reports_both_bounds(cond_run, labelled, tmp_path, run):
    js = tmp_path / "e.json"
    r = run("evaluate", cond_run, "--data", labelled / "test.npy", "--labels", labelled / "test.csv", "--json", js)
    assert r.returncode == 0, r.stderr
    rec = json.loads(js.read_text())
    assert rec["labels"] == "true"
    for key in ("bits_per_dim_unconditional", "K_bits_unconditional", "stderr_bits_unconditional", "label_gain_bits"):
        assert key in rec
    # three well-separated classes: the label is worth bits (log2(3) for exact bounds; the
    # null class, trained on a tenth of the steps' examples, is looser here)
    assert rec["label_gain_bits"] > 0.8
    r = run("evaluate", cond_run, "--data", labelled / "test.npy", "--json", js)  # no labels: log p(x)
    assert r.returncode == 0 and json.loads(js.read_text())["labels"] == "null"


def test_classify_end_to_end(cond_run, labelled, tmp_path, run):
    js, probs = tmp_path / "c.json", tmp_path / "p.npy"
    r = run("classify", cond_run, "--data", labelled / "test.npy", "--labels", labelled / "test.csv",
            "--out", probs, "--json", js, "--n-t", 8)
    assert r.returncode == 0, r.stderr
    p = np.load(probs)
    assert p.shape == (150, 3) and np.allclose(p.sum(1), 1)
    rec = json.loads(js.read_text())
    assert rec["accuracy"] > 0.95 and rec["class_names"] == list(NAMES)
    assert np.asarray(rec["confusion"]).sum() == 150
    assert (tmp_path / "p.png").stat().st_size > 0


def test_bad_classes_and_labels_are_one_line_errors(cond_run, labelled, tmp_path, cli):
    _one_line_error(cli("sample", cond_run, "--class", "fox", "-n", 5, "--out", tmp_path / "s.npy"), "'fox'")
    _one_line_error(cli("sample", cond_run, "--guidance", "1", "-n", 5, "--out", tmp_path / "s.npy"), "--class")
    _one_line_error(cli("sample", cond_run, "--class", "cat", "--guidance", "-1", "-n", 5,
                        "--out", tmp_path / "s.npy"), "--guidance")
    short = tmp_path / "short.csv"
    short.write_text("animal\ncat\ndog\n")
    _one_line_error(cli("evaluate", cond_run, "--data", labelled / "test.npy", "--labels", short), "labels for 150 examples")
    odd = tmp_path / "odd.csv"
    _write_labels(odd, [0] * 150)
    odd.write_text(odd.read_text().replace("cat\n", "fox\n", 1))
    _one_line_error(cli("classify", cond_run, "--data", labelled / "test.npy", "--labels", odd,
                        "--out", tmp_path / "p.npy"), "'fox'")
    missing = tmp_path / "missing.csv"
    missing.write_text("animal\n" + "cat\n" * 700 + " \n" + "dog\n" * 799)
    _one_line_error(cli("train", "--data", labelled / "x.npy", "--labels", missing, "--out", tmp_path / "r",
                        "--steps", 5), "label 701 is missing")
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_unconditional_runs_refuse_classes(mixture_run, tmp_path, cli):
    _one_line_error(cli("sample", mixture_run, "--class", "0", "-n", 5, "--out", tmp_path / "s.npy"), "unconditional")
    _one_line_error(cli("classify", mixture_run, "--out", tmp_path / "p.npy"), "unconditional")


def test_condition_a_class_guided(cond_run, tmp_path, run):
    # inpainting p(x | y = eel) r(x): the first coordinate known (0), the second drawn;
    # the eel's cluster sits at (0, 3.5)
    np.save(tmp_path / "known.npy", np.array([0.0, 0.0]))
    np.save(tmp_path / "mask.npy", np.array([1.0, 0.0]))
    out = tmp_path / "c.npy"
    r = run("condition", cond_run, "--class", "eel", "--guidance", "1", "--known", tmp_path / "known.npy",
            "--mask", tmp_path / "mask.npy", "-n", 200, "--out", out, "--steps", 50)
    assert r.returncode == 0, r.stderr
    x = np.load(out)
    assert np.allclose(x[:, 0], 0.0, atol=1e-6)
    assert abs(np.median(x[:, 1]) - 3.5) < 0.5
