"""`evaluate --iw` and `thermodiff report` end to end on tiny runs with a known density."""

import json

import pytest

from conftest import CONTRACT_KEYS, _one_line_error

# The tiny runs `mixture_run` and `heartbeat_run` are conftest fixtures (shared with
# test_condition_cli): 20 steps of the iw-mixture and heartbeat configs.
IW_KEYS = ("iw_bits", "iw_bits_scaled", "iw_stderr_bits", "iw_M")

@pytest.mark.parametrize("which", ["mixture_run", "heartbeat_run"])
def test_evaluate_iw_adds_its_fields(which, request, tmp_path, run):
    run_dir = request.getfixturevalue(which)
    r = run("evaluate", run_dir, "--iw", 10, "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "e.json").read_text())
    for key in CONTRACT_KEYS + IW_KEYS:
        assert key in rec, key
    assert rec["iw_M"] == 10 and rec["iw_n_examples"] == 30 and rec["iw_steps"] == 12
    assert [c["M"] for c in rec["iw_curve"]] == [1, 2, 5, 10]
    assert rec["iw_stderr_bits"] > 0
    # Both data sets have an exact density: each curve point carries its paired gap.
    assert all("gap_bits" in c for c in rec["iw_curve"]) and "iw_gap_bits" in rec
    if which == "heartbeat_run":
        assert rec["iw_bits"] == rec["iw_bits_scaled"]  # binary data are never rescaled


def test_report_writes_markdown_json_and_figures(mixture_run, tmp_path, run):
    out = tmp_path / "rep"
    r = run("report", mixture_run, "--iw", 20, "--iw-examples", 25, "--ode-examples", 30, "--out", out)
    assert r.returncode == 0, r.stderr
    text = (out / "report.md").read_text()
    rec = json.loads((out / "report.json").read_text())
    assert rec["iw_M"] == 20 and rec["iw_n_examples"] == 25
    # 2-D data: the ODE figure beside K and IW(M) by default, in one table.
    assert rec["ode_n_examples"] == 30 and "ode_gap_bits" in rec
    assert "side by side" in text and "| IW(20) |" in text and "| ODE (" in text
    for name in ("bound_terms.png", "iw_curve.png", "entropy_bounds.png", "samples.png"):
        assert (out / name).stat().st_size > 1000 and f"]({name})" in text
    assert "Importance-weighted estimate against M" in text and "eq. 24 bounds" in text
    ent = rec["entropy_bounds"]
    assert len(ent["t"]) == len(ent["lower"]) == len(ent["model"]) == 11
    r = run("report", mixture_run, "--iw", 4, "--iw-examples", 5, "--out", tmp_path / "html", "--html", "--no-ode")
    assert r.returncode == 0, r.stderr
    assert "<table>" in (tmp_path / "html" / "report.html").read_text()
    assert "ode_bits" not in json.loads((tmp_path / "html" / "report.json").read_text())


def test_bad_iw_arguments_are_one_line_errors(mixture_run, tmp_path, cli):
    _one_line_error(cli("evaluate", mixture_run, "--iw", 0, "--json", tmp_path / "e.json"), "M >= 1")
    assert not (tmp_path / "e.json").exists()
    _one_line_error(cli("report", mixture_run, "--iw-examples", 0, "--out", tmp_path / "r"), "iw_examples")
    assert not (tmp_path / "r" / "report.md").exists()
    _one_line_error(cli("report", tmp_path / "nothing"), "run folder not found")


def test_iw_bench_smoke(tmp_path, run):
    r = run("bench", "iw-mixture", "--smoke", "--out", tmp_path / "b", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "b.json").read_text())
    assert rec["benchmark"] == "iw-mixture" and rec["iw_M"] == 10 and rec["iw_n_examples"] == 20
    assert "iw_gap_bits" in rec and "gap_bits" in rec
