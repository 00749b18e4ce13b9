""".pt2 files as users bring them: outputs that are not plain tensors (a registered dataclass
from the user's own package, as a Hugging Face model returns BaseModelOutput; a dict in
insertion order), and tiny Hugging Face transformers models exported as their users do
(torch.export.export(model, args, strict=False)) with what that brings along: non-persistent
buffers and ops only a decomposition makes legal.
(.pt2 files crafted to run code as they load: test_pt2_safety.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import Project, copy_project, needs_torch

pytestmark = needs_torch

# fields not in alphabetical order: the compiled module returns them in field order
OUTPUTS_MODULE = """
import dataclasses
import torch

@dataclasses.dataclass
class Out:
    second: torch.Tensor
    first: torch.Tensor

torch.export.register_dataclass(Out, serialized_type_name="mypkg.outputs.Out")
"""

EXPORT_SCRIPT = """
import sys, torch
from mypkg.outputs import Out

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 3)

    def forward(self, x):
        y = self.linear(x)
        return Out(second=torch.tanh(y), first=y * 2)

torch.manual_seed(0)
torch.export.save(torch.export.export(Net(), (torch.randn(4, 8),)), sys.argv[1])
"""

# plain-tensor outputs in a dict, tiny configs of real Hugging Face architectures exported as a
# user would (BaseModelOutput and all), and what Swin and wav2vec2 bring in a few lines (a
# buffer inside an op's list argument, a weight-normalized convolution): one export process
# writes them all into one folder, validated by one doit run
EXPORT_FOLDER_SCRIPT = """
import sys, torch, transformers
from pathlib import Path

folder = Path(sys.argv[1])

def save(name, model, *args):
    torch.export.save(torch.export.export(model.eval(), args, strict=False),
                      folder / f"{name}.pt2")

class Dict(torch.nn.Module):
    def forward(self, x):
        return {"zeta": x + 1, "alpha": torch.sigmoid(x) * 3}

class Listed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("order", torch.tensor([3, 0, 2, 1, 5, 4]))
        self.conv = torch.nn.utils.parametrizations.weight_norm(
            torch.nn.Conv1d(4, 4, 3, padding=1), dim=2)

    def forward(self, x):
        return self.conv(x[:, :, self.order])

class Bicubic(torch.nn.Module):   # as YOLOS resizes its position embeddings
    def forward(self, x):
        return torch.nn.functional.interpolate(x, size=(7, 5), mode="bicubic",
                                               align_corners=False)

torch.manual_seed(0)
save("dict", Dict(), torch.randn(1, 4, 6))
save("listed", Listed(), torch.randn(1, 4, 6))
save("bicubic", Bicubic(), torch.randn(1, 2, 4, 3))
ids = torch.randint(0, 100, (1, 8))
save("bert", transformers.BertModel(transformers.BertConfig(
    vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=64, max_position_embeddings=32)), ids)
save("gpt2", transformers.GPT2LMHeadModel(transformers.GPT2Config(
    vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=32, use_cache=False)), ids)
"""


@pytest.fixture(scope="module")
def dataclass_pt2(tmp_path_factory):
    """(.pt2 whose output is mypkg.outputs.Out, the folder holding mypkg)."""
    root = tmp_path_factory.mktemp("dataclass_pt2")
    package = root / "site" / "mypkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "outputs.py").write_text(textwrap.dedent(OUTPUTS_MODULE))
    model = root / "out.pt2"
    # exported in a separate process: this one must not have mypkg registered
    subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, str(model)], check=True,
                   env={**_environ(), "PYTHONPATH": str(root / "site")})
    return model, root / "site"


def _environ() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def by_stage(project: Project) -> dict[str, dict]:
    return {t["stage"]: t for t in project.record()}


def test_pytree_output_class_is_imported_from_its_package(dataclass_pt2, tmp_path, monkeypatch):
    model, site = dataclass_pt2
    monkeypatch.setenv("PYTHONPATH", str(site))
    project = Project(copy_project(tmp_path / "proj"))
    project.doit("validate", f"model={model}", "target=cpu")
    result = by_stage(project)["validate"]["result"]
    assert result["passed"] and result["max_abs_error"] < 1e-5


def test_pytree_output_class_not_importable_says_what_to_install(dataclass_pt2, tmp_path,
                                                                  monkeypatch):
    model, _ = dataclass_pt2
    monkeypatch.delenv("PYTHONPATH", raising=False)
    project = Project(copy_project(tmp_path / "proj"))
    proc = project.doit("validate", f"model={model}", "target=cpu", check=False)
    assert proc.returncode != 0
    capture = by_stage(project)["capture"]
    assert capture["status"] == "failed"
    assert "mypkg.outputs.Out" in capture["error"]
    assert "pip install mypkg" in capture["error"] and "PYTHONPATH" in capture["error"]
    # handled, not a torch traceback on the console
    assert "Deserializing" not in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> dict[str, dict]:
    """validate:<model>@cpu's record entry for each .pt2 that EXPORT_FOLDER_SCRIPT writes,
    from one doit run over their folder."""
    record, _ = validated_folder(tmp_path_factory.mktemp("pt2_folder"), EXPORT_FOLDER_SCRIPT,
                                 {"dict", "listed", "bicubic", "bert", "gpt2"})
    return record


def validated_folder(root, script: str, models: set[str]) -> tuple[dict[str, dict], Project]:
    """(validate:<model>@cpu's record entry for each of the models the export script writes
    into a folder, from one doit run over it; the project)."""
    folder = root / "models"
    folder.mkdir()
    subprocess.run([sys.executable, "-c", script, str(folder)], check=True)
    project = Project(copy_project(root / "proj"))
    proc = project.doit("validate", f"model={folder}", "target=cpu", check=False)
    record = {t["model"]: t for t in project.record() if t["stage"] == "validate"}
    assert set(record) == models, proc.stdout[-3000:]
    return record, project


def passed(entry: dict, within: float) -> bool:
    result = entry.get("result") or {}
    return entry["status"] == "ran" and result["passed"] and result["max_abs_error"] < within


def test_dict_outputs_keep_the_exported_order(folder_run):
    assert passed(folder_run["dict"], 1e-5), folder_run["dict"]


def test_hf_bert_with_non_persistent_buffers_validates(folder_run):
    # BERT's position_ids / token_type_ids are non-persistent buffers: the exported program
    # keeps them among its constants, not its state dict, where the importer looks for buffers
    assert passed(folder_run["bert"], 1e-4), folder_run["bert"]


def test_hf_gpt2_with_ops_only_decompositions_legalize_validates(folder_run):
    # GPT-2's attention mask calls aten.diff, which IREE has no lowering for (torch's own
    # decomposition of it does), and combines masks with `&` from a constant bool tensor
    assert passed(folder_run["gpt2"], 1e-4), folder_run["gpt2"]
    # its masks are made in float32 by the graph itself: judged by float64 all the same
    assert folder_run["gpt2"]["result"]["rule"] == "f64-noise", folder_run["gpt2"]["result"]


def test_buffer_in_a_list_and_weight_norm_validate(folder_run):
    assert passed(folder_run["listed"], 1e-5), folder_run["listed"]


def test_bicubic_upsampling_is_decomposed_and_validates(folder_run):
    # aten.upsample_bicubic2d (YOLOS's position embeddings): IREE has no lowering for it,
    # torch's core-ATen decomposition (gathers and arithmetic) does
    assert passed(folder_run["bicubic"], 1e-5), folder_run["bicubic"]


@needs_torch
def test_a_pt2_whose_graph_makes_float32_tensors_itself_still_runs_in_float64():
    """OPT's and DeBERTa-v2's .pt2 files fell back to atol/rtol: their graphs make tensors
    of torch's default dtype (`aten.ones([1, 16])`, no dtype) and hold constant tensors
    (`lifted_tensor_0`) that moving the module to float64 leaves float32."""
    import numpy as np
    import torch

    from pipeline.stage import ModelSpec
    from stages.frameworks.base import Traced
    from stages.frameworks.pytorch import ADAPTER

    class Untyped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, x):
            # as Hugging Face's masks: made, then cast to the dtype the model runs in (the
            # graph asserts the tensor's dtype before each cast)
            scale = torch.sqrt(torch.tensor(3.0) * 1).to(torch.float32)   # a lifted constant
            return self.linear(x) * torch.ones(1, 4).to(torch.float32) / scale

    inputs = [np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)]
    program = torch.export.export(Untyped(), (torch.from_numpy(inputs[0]),))
    with torch.no_grad():
        answer = program.module()(torch.from_numpy(inputs[0])).numpy()
    traced = Traced(artifact=program, inputs=inputs, reference=[answer])
    (answer64,) = ADAPTER.reference64(ModelSpec("untyped", "torch", {}), traced)
    assert answer64.dtype == np.float64
    np.testing.assert_allclose(answer64, answer, rtol=1e-5, atol=1e-6)


# programs users write that kiln's own stages once failed on (issue 27): an STFT (a complex
# DFT matrix among its constants: weight lifting), a CNN as PyTorch 2 Export quantization
# leaves it (quantized_decomposed ops: capture), and an f64 output (legalize's f64 demotion)
EXPORT_UNUSUAL_SCRIPT = """
import sys, torch
from pathlib import Path
import torch.ao.quantization.fx._decomposed   # registers quantized_decomposed (as torchao does)

folder = Path(sys.argv[1])
qd = torch.ops.quantized_decomposed

class Stft(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(12))

    def forward(self, x):   # n_fft 12: torch-mlir's DFT is a 12x7 complex<f32> constant
        spec = torch.stft(x, n_fft=12, hop_length=3, window=self.window, center=True,
                          return_complex=True)
        return torch.view_as_real(spec)

class QuantizedCnn(torch.nn.Module):
    # what convert_pt2e leaves (XNNPACK quantizer): int8 weights dequantized per channel,
    # activations quantized and dequantized per tensor
    def __init__(self):
        super().__init__()
        weight = torch.randn(8, 3, 3, 3)
        scale = weight.abs().amax(dim=(1, 2, 3)) / 127
        self.register_buffer("w_int8", torch.round(weight / scale[:, None, None, None])
                             .to(torch.int8))
        self.register_buffer("w_scale", scale)
        self.register_buffer("w_zero", torch.zeros(8, dtype=torch.int64))
        self.bias = torch.nn.Parameter(torch.randn(8) * 0.1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = qd.quantize_per_tensor.default(x, 0.02, 0, -128, 127, torch.int8)
        x = qd.dequantize_per_tensor.default(x, 0.02, 0, -128, 127, torch.int8)
        w = qd.dequantize_per_channel.default(self.w_int8, self.w_scale, self.w_zero, 0,
                                              -127, 127, torch.int8)
        y = torch.nn.functional.conv2d(x, w, self.bias, padding=1).relu()
        y = qd.quantize_per_tensor.default(y, 0.05, -128, -128, 127, torch.int8)
        y = qd.dequantize_per_tensor.default(y, 0.05, -128, -128, 127, torch.int8)
        return self.fc(y.mean(dim=(2, 3)))

class Float64(torch.nn.Module):   # as torch-mlir's e2e tests write them
    def forward(self, x):
        return x.mean(dtype=torch.float64), torch.div(x.double() * 7, 3.0, rounding_mode="trunc")

torch.manual_seed(0)
for name, model, example in (("stft", Stft(), torch.randn(2, 64)),
                             ("qcnn", QuantizedCnn(), torch.randn(1, 3, 8, 8)),
                             ("mean64", Float64(), torch.randn(3, 5))):
    torch.export.save(torch.export.export(model.eval(), (example,)), folder / f"{name}.pt2")
"""


@pytest.fixture(scope="module")
def unusual_run(tmp_path_factory) -> tuple[dict[str, dict], Project]:
    """validate:<model>@cpu's record entry for each .pt2 EXPORT_UNUSUAL_SCRIPT writes (one
    doit run), and the project."""
    return validated_folder(tmp_path_factory.mktemp("pt2_unusual"), EXPORT_UNUSUAL_SCRIPT,
                            {"stft", "qcnn", "mean64"})


def test_stft_complex_constant_moves_to_the_archive_and_validates(unusual_run):
    record, project = unusual_run
    assert passed(record["stft"], 1e-5), record["stft"]
    emitted = json.loads((project.root / "build" / "stft" / "emit" / "model.json").read_text())
    assert {"dtype": "complex<f32>", "name": "constant.0", "shape": [12, 7]} in \
        emitted["parameter_tensors"], emitted["parameter_tensors"]


def test_pt2e_quantized_cnn_loads_and_validates(unusual_run):
    record, _ = unusual_run
    assert passed(record["qcnn"], 1e-4), record["qcnn"]


def test_f64_outputs_keep_f64_and_validate(unusual_run):
    record, project = unusual_run
    assert passed(record["mean64"], 1e-12), record["mean64"]
    legalized = json.loads((project.root / "build" / "mean64" / "legalize" / "legalize.json")
                           .read_text())
    assert legalized["f64_kept"] is True
    assert "--iree-input-demote-f64-to-f32=false" in \
        (project.root / "build" / "logs" / "legalize.mean64.log").read_text()
    # a model without f64 at its entry keeps IREE's default (demotion: any backend runs it)
    stft = json.loads((project.root / "build" / "stft" / "legalize" / "legalize.json")
                      .read_text())
    assert stft["f64_kept"] is False


CUSTOM_OP_SCRIPT = """
import sys, torch

@torch.library.custom_op("mylib::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2

@twice.register_fake
def _(x):
    return torch.empty_like(x)

class Net(torch.nn.Module):
    def forward(self, x):
        return torch.ops.mylib.twice(x) + 1

torch.export.save(torch.export.export(Net(), (torch.randn(3),)), sys.argv[1])
"""


def test_a_custom_op_of_another_namespace_is_refused_by_name(tmp_path):
    """kiln registers torch's own op libraries only; a custom op's module is never imported."""
    from pipeline.stage import StageError
    from stages.frameworks.pytorch import load_program
    model = tmp_path / "custom.pt2"
    subprocess.run([sys.executable, "-c", CUSTOM_OP_SCRIPT, str(model)], check=True)
    with pytest.raises(StageError, match=r"custom.pt2: the program calls "
                                         r"torch\.ops\.mylib\.twice.*namespace 'mylib'"):
        load_program(model)
