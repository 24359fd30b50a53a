"""The public API: `import thermodiff` exports what the README's Python example uses,
loads torch only when a name is used, and the example itself runs as written."""

import ast
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import thermodiff

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The first python code block of the README's "## Python" section."""
    text = README.read_text()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python section has no python code block"
    return match.group(1)


def _fresh_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_thermodiff_and_the_cli_do_not_import_torch():
    code = "import sys, thermodiff, thermodiff.cli; print('torch' in sys.modules)"
    assert _fresh_python(code) == "False"


def test_every_public_name_resolves_to_its_source():
    from thermodiff import config, data, evaluation, guidance, model, train
    from thermodiff.sampling import ancestral, conditioning

    expected = {
        "Config": config.Config, "load_config": config.load, "apply_overrides": config.apply_overrides,
        "config_path": config.config_path, "load_data": data.load,
        "DiffusionModel": model.DiffusionModel, "build_model": model.build_model,
        "fit": train.fit, "load_run": train.load_run,
        "evaluate_run": evaluation.evaluate_run, "iw_record": evaluation.iw_record,
        "sample": ancestral.sample, "sample_conditioned": conditioning.sample_conditioned,
        "Known": conditioning.Known, "GaussianObservation": conditioning.GaussianObservation,
        "Smooth": conditioning.Smooth, "Box": conditioning.Box,
        "BitProbabilities": conditioning.BitProbabilities, "ClassifierGuidance": conditioning.ClassifierGuidance,
        "Guided": guidance.Guided,
    }
    assert sorted(thermodiff.__all__) == sorted(expected)
    for name, obj in expected.items():
        assert getattr(thermodiff, name) is obj, name
    assert set(thermodiff.__all__) <= set(dir(thermodiff))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        thermodiff.nonexistent  # noqa: B018


def test_the_readme_example_uses_only_public_names():
    tree = ast.parse(readme_example())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module in ("thermodiff", "torch"), f"the example imports from {node.module}"
            if node.module == "thermodiff":
                assert {a.name for a in node.names} <= set(thermodiff.__all__)
        elif isinstance(node, ast.Import):
            assert {a.name for a in node.names} <= {"thermodiff", "torch"}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "thermodiff":
            assert node.attr in thermodiff.__all__, f"thermodiff.{node.attr} is not public"


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(readme_example(), "README.md (Python)", "exec"), ns)

    # A run folder, written by fit and read back by load_run at the step budget.
    run = tmp_path / "runs" / "readme"
    assert {"config.toml", "checkpoint.safetensors", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
    cfg, meta, model = ns["cfg"], ns["meta"], ns["model"]
    assert isinstance(model, thermodiff.DiffusionModel)
    assert meta["step"] == cfg.train.steps == 300
    assert (cfg.model.width, cfg.model.depth, cfg.data.n_test) == (64, 2, 1000)

    # The record: K, the exact value and their paired gap, as printed.
    record = ns["record"]
    assert record["n_examples"] == 1000
    for key in ("K_bits_scaled", "exact_bits_scaled", "gap_bits", "gap_stderr_bits"):
        assert math.isfinite(record[key]), key
    assert record["gap_bits"] == pytest.approx(record["exact_bits_scaled"] - record["K_bits_scaled"], abs=1e-9)
    assert "warning" not in record and record["gap_bits"] > 0  # a lower bound, and far from converged
    printed = capsys.readouterr().out
    assert f"gap {record['gap_bits']:.2f} +- {record['gap_stderr_bits']:.2f} bits" in printed

    # Samples in data units; the conditioned ones keep x_1 = 5 exactly.
    x, y = ns["x"], ns["y"]
    assert x.shape == y.shape == (1000, 2)
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    assert (y[:, 0] == 5.0).all() and y[:, 1].std() > 0  # x_1 known, x_2 drawn
