"""The framework registry: one adapter module per framework in this package.

An adapter says how its framework captures a model, writes the interchange format and imports
it to MLIR; everything after import is framework-free. Adapter modules import their framework
inside methods only, so listing them costs nothing. The package's other modules are what
adapters build on: base (the adapter base class and its template), factory (models/
factories), inputs (the inputs a model runs on), arrays (the .npz files), refusals (whose an
exception raised in a framework stage is: the framework's refusal of its model, a verdict, or
kiln's own error), and helpers of one framework's adapters (pt2_safety, tf_common, onnx_common,
onnx_twin: the float64 twin of an ONNX graph). The names
stages use are re-exported here.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from pipeline.stage import StageError

from .arrays import load_arrays, save_arrays
from .base import Framework, Intermediate, NoFloat64, NoIntermediates, Traced, suffix_of
from .factory import build_model, load_factory
from .inputs import INT_INPUT_HIGH, model_inputs, seeded_inputs

HERE = Path(__file__).parent

__all__ = ["get", "companions", "detect", "Framework", "Intermediate", "NoFloat64",
           "NoIntermediates", "Traced", "load_arrays",
           "save_arrays", "build_model", "load_factory", "model_inputs", "seeded_inputs",
           "INT_INPUT_HIGH"]

_REGISTRY: dict[str, Framework] = {}


def _load_all() -> dict[str, Framework]:
    if not _REGISTRY:
        for info in pkgutil.iter_modules([str(HERE)]):
            module = importlib.import_module(f"{__name__}.{info.name}")
            adapter = getattr(module, "ADAPTER", None)
            if isinstance(adapter, Framework):
                _REGISTRY[adapter.name] = adapter
    return _REGISTRY


def get(name: str) -> Framework:
    adapters = _load_all()
    if name not in adapters:
        raise StageError(f"unknown framework '{name}' (valid: {', '.join(sorted(adapters))})")
    return adapters[name]


def companions(framework: str, path: Path) -> dict[str, Path]:
    """The extra files a model file of this framework reads (by role), for the keys."""
    adapters = _load_all()
    return adapters[framework].companions(Path(path)) if framework in adapters else {}


def detect(path: Path | str) -> str | None:
    """The framework that reads this model file or directory, if any."""
    # (a folder scan asks this of every entry, 12,000 for a 2,000-case suite: the adapters
    # are asked with the text, as a Path made per entry was most of a scan's time)
    text = str(path)
    suffix = suffix_of(text)
    for adapter in _load_all().values():
        if type(adapter).matches is Framework.matches:
            if suffix in adapter.suffixes:
                return adapter.name
        elif adapter.matches(text):
            return adapter.name
    return None
