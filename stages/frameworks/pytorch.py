"""PyTorch adapter: torch.export capture, .pt2 interchange, turbine decompositions + FxImporter.

Import order matters: without turbine's decomposition table ResNet leaves ops IREE rejects
(relu_, _native_batch_norm_legit_no_training). FxImporter mutates the program it imports, so
the .pt2 is loaded afresh for each import.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from pipeline.stage import ModelSpec, StageError

from . import Framework, load_factory, save_arrays, seeded_inputs


def _flatten(value):
    import torch
    if isinstance(value, torch.Tensor):
        return [value.detach().numpy()]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _flatten(v)]
    if isinstance(value, dict):
        return [a for k in sorted(value) for a in _flatten(value[k])]
    raise StageError(f"model output of type {type(value).__name__} is not a tensor or a "
                     "tuple/list/dict of tensors")


# torch 2.13's own pytree code trips this deprecation when a .pt2 is loaded; it is noise
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)


class PyTorch(Framework):
    name = "torch"
    extra = "torch"
    modules = ("torch", "iree.turbine")
    dists = ("torch", "iree-turbine")
    suffixes = (".pt2",)
    input_type = "torch"
    captured = ("exported.pt2",)
    serialized = "model.pt2"

    def capture(self, model: ModelSpec, out: Path) -> None:
        import torch
        torch.manual_seed(model.seed)
        if model.factory:
            module, inputs = load_factory(model.factory)()
            module.eval()
            with torch.no_grad():
                program = torch.export.export(module, tuple(inputs))
                reference = module(*inputs)
        else:  # a user's .pt2
            program = torch.export.load(str(model.sources["model"]))
            inputs = [torch.from_numpy(a) for a in seeded_inputs(
                _signature(program), model.shapes, model.seed, model.name)]
            with torch.no_grad():
                reference = program.module()(*inputs)
        torch.export.save(program, str(out / "exported.pt2"))
        save_arrays(out / "inputs.npz", "arg", [t.numpy() for t in inputs])
        save_arrays(out / "reference.npz", "out", _flatten(reference))

    def serialize(self, captured: Path, out: Path) -> None:
        import torch
        # the zip's top folder is the file stem: a fixed name keeps the bytes reproducible
        program = torch.export.load(str(captured / "exported.pt2"))
        torch.export.save(program, str(out / self.serialized))

    def import_mlir(self, serialized: Path, out: Path) -> None:
        import torch
        from iree.compiler.extras.fx_importer import FxImporter
        from iree.turbine.aot import current_aot_decompositions

        from stages.mlir import write_stripped
        program = torch.export.load(str(serialized)).run_decompositions(current_aot_decompositions())
        importer = FxImporter()
        importer.import_frozen_program(program)
        write_stripped(importer.module, out)


def _signature(program) -> list[tuple[str, list, str]]:
    """(name, dims, dtype) of each user input, from the placeholders' fake tensors."""
    import torch
    user_inputs = set(program.graph_signature.user_inputs)
    signature = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            value = node.meta["val"]
            dims = [d if isinstance(d, int) else None for d in value.shape]
            dtype = str(torch.empty((), dtype=value.dtype).numpy().dtype)
            signature.append((node.name, dims, dtype))
    return signature


ADAPTER = PyTorch()
