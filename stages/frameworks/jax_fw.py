"""JAX adapter: jax.export capture, serialized-export interchange (.jaxexport), StableHLO import.

A models/ file's build() returns (function, inputs): a function of arrays (jittable; closed-over
weights become constants) and a tuple of numpy example inputs. JAX seeds nothing itself, so
build() makes its weights and inputs from a fixed seed (numpy default_rng). A user's model file
is a serialized jax.export.Exported (`exported.serialize()` saved as *.jaxexport); its inputs
come from the export's in_avals and the model's seed.

Determinism: a JAX export embeds the Python source paths of the traced code in its locations
unless JAX_TRACEBACK_IN_LOCATIONS_LIMIT=0 is set before tracing, so it is set (env and config)
before anything is traced. Import takes the export's StableHLO text and writes it as bytecode
with all locations stripped. The reference is the exported artifact itself run by JAX on CPU.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.stage import ModelSpec, StageError

from .base import Framework, NoFloat64, Traced
from .factory import build_model
from .inputs import model_inputs


def _jax():
    os.environ["JAX_TRACEBACK_IN_LOCATIONS_LIMIT"] = "0"   # no source paths in locations
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    jax.config.update("jax_traceback_in_locations_limit", 0)
    return jax


def _leaves(value) -> list:
    import numpy as np
    jax = _jax()
    leaves = jax.tree_util.tree_leaves(value)
    if not leaves:
        raise StageError("the JAX function returned no arrays")
    return [np.asarray(a) for a in leaves]


class Jax(Framework):
    name = "jax"
    extra = "jax"
    modules = ("jax", "jaxlib", "flatbuffers")
    dists = ("jax", "jaxlib", "flatbuffers")
    packages = ("jax", "jaxlib", "iree.compiler")   # (the MLIR parser reads its export)
    suffixes = (".jaxexport",)
    input_type = "stablehlo"
    captured = ("exported.jaxexport",)
    serialized = "model.jaxexport"

    def trace(self, model: ModelSpec) -> Traced:
        jax = _jax()
        if model.factory:
            function, inputs = build_model(model, callable, "function")
            specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in inputs]
            exported = jax.export.export(jax.jit(function))(*specs)
        else:  # a user's serialized export
            exported = _deserialize(Path(model.sources["model"]))
            inputs = model_inputs(model, _signature(exported))
        return Traced(artifact=bytes(exported.serialize()), inputs=inputs,
                      reference=_leaves(exported.call(*inputs)),
                      source=function if model.factory else None)

    def reference64(self, model: ModelSpec, traced: Traced) -> list:
        """A models/ function re-run under jax's x64 mode on the inputs cast to float64
        (weights it closes over as numpy float32 stay float32 unless it makes them from its
        inputs' dtype); an exported .jaxexport has its dtypes fixed: none."""
        import numpy as np
        if traced.source is None:
            raise NoFloat64("a .jaxexport's dtypes are fixed at export: no float64 run")
        jax = _jax()
        inputs = [a.astype(np.float64) if a.dtype == np.float32 else a for a in traced.inputs]
        try:
            with jax.enable_x64(True):   # (jax.experimental's before jax 0.8)
                answer = _leaves(traced.source(*inputs))
        except Exception as err:   # a function that insists on its own dtypes
            raise NoFloat64(f"the function does not run in float64: {type(err).__name__}: "
                            f"{(str(err).splitlines() or [''])[0][:300]}") from None
        if not any(a.dtype == np.float64 for a in answer):
            raise NoFloat64("the function computed in float32 under x64 mode (its weights or "
                            "casts fix the dtype): no float64 answer")
        return answer

    # serialize: the blob is already the interchange format, copied under the fixed name

    def import_mlir(self, serialized_file: Path, mlir_file: Path) -> None:
        from stages.mlir import parse, write_stripped
        exported = _deserialize(serialized_file)
        write_stripped(parse(exported.mlir_module().encode()), mlir_file)

    timing_threads = "XLA's own pool, not settable: one per core the process may use"

    def runner(self, capture_dir: Path, inputs: list, threads: int):
        # the export capture ran for the reference, jitted; JAX dispatches asynchronously,
        # so a call is done only once its results are ready
        jax = _jax()
        exported = _deserialize(capture_dir / self.captured[0])
        call, arrays = jax.jit(exported.call), [jax.numpy.asarray(a) for a in inputs]
        return lambda: jax.block_until_ready(call(*arrays))


def _deserialize(path: Path):
    """The jax.export.Exported a .jaxexport file holds."""
    return _jax().export.deserialize(bytearray(path.read_bytes()))


def _signature(exported) -> list[tuple[str, list, str]]:
    return [(f"arg{i}", [d if isinstance(d, int) else None for d in aval.shape], aval.dtype.name)
            for i, aval in enumerate(exported.in_avals)]


ADAPTER = Jax()
