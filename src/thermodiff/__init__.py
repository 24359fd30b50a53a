"""thermodiff: diffusion probabilistic models with an honest log-likelihood bound K.

The public API, all importable from here (the README's "Python" section uses them)::

    cfg = thermodiff.apply_overrides(thermodiff.load_config(path), ["train.steps=300"])
    dataset = thermodiff.load_data(cfg.data)            # train / test tensors, log-density
    model = thermodiff.fit(cfg, dataset, "runs/x")      # trains into a run folder
    record = thermodiff.evaluate_run(model, dataset.test, cfg.eval, dataset.log_density)
    cfg, model, meta = thermodiff.load_run("runs/x")

The names are loaded on first use (PEP 562), so ``import thermodiff`` and the
``thermodiff`` command line start without importing torch.
"""

from importlib import import_module as _import_module
from typing import TYPE_CHECKING as _TYPE_CHECKING

# Public name -> (module, attribute in it).
_EXPORTS = {
    # configs: typed dataclasses <-> TOML with dotted overrides
    "Config": ("thermodiff.config", "Config"),
    "load_config": ("thermodiff.config", "load"),
    "apply_overrides": ("thermodiff.config", "apply_overrides"),
    "config_path": ("thermodiff.config", "config_path"),
    # data
    "load_data": ("thermodiff.data", "load"),
    # models, training and run folders
    "DiffusionModel": ("thermodiff.model", "DiffusionModel"),
    "build_model": ("thermodiff.model", "build_model"),
    "fit": ("thermodiff.train", "fit"),
    "load_run": ("thermodiff.run_folder", "load_run"),
    # evaluation: K, the paired gap to the exact log-likelihood, the importance-weighted estimate
    "evaluate_run": ("thermodiff.evaluation", "evaluate_run"),
    "iw_record": ("thermodiff.evaluation", "iw_record"),
    # sampling, and sampling p(x) r(x) (paper section 2.5)
    "sample": ("thermodiff.sampling.ancestral", "sample"),
    "sample_conditioned": ("thermodiff.sampling.conditioning", "sample_conditioned"),
    "Known": ("thermodiff.sampling.conditioning", "Known"),
    "GaussianObservation": ("thermodiff.sampling.conditioning", "GaussianObservation"),
    "Smooth": ("thermodiff.sampling.conditioning", "Smooth"),
    "Box": ("thermodiff.sampling.conditioning", "Box"),
    "BitProbabilities": ("thermodiff.sampling.conditioning", "BitProbabilities"),
    "ClassifierGuidance": ("thermodiff.sampling.conditioning", "ClassifierGuidance"),
    # class-conditional models: classifier-free guidance (thermodiff.classify: the likelihood as a classifier)
    "Guided": ("thermodiff.guidance", "Guided"),
}

__all__ = list(_EXPORTS)

if _TYPE_CHECKING:  # for type checkers and editors; at run time the names load lazily
    from .config import Config, apply_overrides, config_path
    from .config import load as load_config
    from .data import load as load_data
    from .evaluation import evaluate_run, iw_record
    from .model import DiffusionModel, build_model
    from .sampling.ancestral import sample
    from .sampling.conditioning import (
        BitProbabilities,
        Box,
        ClassifierGuidance,
        GaussianObservation,
        Known,
        Smooth,
        sample_conditioned,
    )
    from .run_folder import load_run
    from .train import fit
    from .guidance import Guided


def __getattr__(name: str):
    """Import a public name's module on first use and keep the name here (PEP 562)."""
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'thermodiff' has no attribute {name!r}") from None
    value = getattr(_import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, loaded or not, and the submodules imported so far."""
    return sorted(set(__all__) | {name for name in globals() if not name.startswith("_")})
