"""stages/bisect.py on real builds: the mlp with its matmuls demoted to bf16 on cpu (conftest's
flags_diff run, where validate fails on the numbers) is bisected against vmvx, and the first
dispatch that goes wrong is named in the record, the console and report.md (report.html's
link to it: tests/test_diff.py, in chromium). Rounding growth, variants that fail alike and
tensors paired with another of their layout: tests/test_bisect_rounding.py."""
from __future__ import annotations

import json

from conftest import Project, copy_project, needs_torch, seed_cache

from pipeline.run.decide import NOT_NEEDED


def bisect_of(record: list[dict], case: str) -> dict:
    return next(t for t in record if t["task"] == f"bisect:{case}")


def test_a_validate_that_fails_on_the_numbers_is_bisected_to_a_matmul(flags_diff):
    tasks = flags_diff["record"]["tasks"]
    statuses = {t["task"]: t["status"] for t in tasks}
    assert statuses["validate:mlp@cpu"] == "failed"
    bisect = bisect_of(tasks, "mlp@cpu")
    assert bisect["status"] == "ran", bisect
    found = bisect["result"]
    first = found["first_bad_dispatch"]
    # a contraction, where f32 inputs were demoted to bf16: not a conversion before it
    assert "_matmul_" in first["symbol"] and "bf16" in first["symbol"], first
    assert first["reference_target"] == "vmvx" == found["reference_target"]
    assert first["max_abs_error"] > found["atol"] and first["max_rel_error"] > 0
    assert first["agreeing_before"] >= 1   # the conversions (and initializers) agree
    assert first["partner"].endswith("_f32") and "_matmul_" in first["partner"]
    # more dispatches in the demoted build than in vmvx's: they paired by value, not place
    assert found["dispatches"]["failing"] > found["dispatches"]["reference"]
    assert found["references_tried"][0]["outcome"].startswith("matches the framework")
    # its executables' sources are kept, in build/
    root = flags_diff["project"].root
    failing = (root / first["sources"]["failing"]).read_text()
    reference = (root / first["sources"]["reference"]).read_text()
    assert f"@{first['executable']}" in failing and first["symbol"] in failing
    assert first["partner"] in reference and "vmvx" in reference
    assert json.loads((root / "build/mlp/cpu/bisect/bisect.json").read_text()) == found
    # vulkan passed: its bisect had nothing to do
    vulkan = bisect_of(tasks, "mlp@vulkan")
    assert vulkan["status"] == "skipped" and vulkan["reason"].startswith(NOT_NEEDED)


def test_the_console_and_report_md_name_the_first_bad_dispatch(flags_diff):
    first = bisect_of(flags_diff["record"]["tasks"], "mlp@cpu")["result"]["first_bad_dispatch"]
    out = flags_diff["validate"].stdout
    failed = out.splitlines().index(next(line for line in out.splitlines()
                                         if line.startswith("FAILED mlp@cpu")))
    said = out.splitlines()[failed + 1]
    assert said.startswith(f"  bisect: first bad dispatch #{first['ordinal']} {first['symbol']}")
    assert "against vmvx's" in said and first["sources"]["failing"] in said
    markdown = flags_diff["markdown"]
    assert "## Diagnoses" in markdown and "| first bad |" in markdown
    assert first["symbol"] in markdown.split("## Diagnoses")[1]


def test_a_bisect_is_restored_and_a_reference_that_cannot_be_built_is_said(flags_diff,
                                                                          tmp_path):
    built = flags_diff["project"]
    project = Project(copy_project(tmp_path / "proj"))
    seed_cache(project, built)
    config = project.root / "targets.yaml"
    config.write_text((built.root / "targets.yaml").read_text())
    # the same key: restored from the cache, not traced again
    project.doit("validate", "model=mlp", "target=cpu", check=False)
    record = project.record()
    assert bisect_of(record, "mlp@cpu")["status"] == "cached"
    assert bisect_of(record, "mlp@cpu")["result"]["first_bad_dispatch"]["symbol"] == \
        bisect_of(flags_diff["record"]["tasks"], "mlp@cpu")["result"]["first_bad_dispatch"]["symbol"]
    # a reference whose build fails: a clear failure of bisect alone, the case as it was
    config.write_text(config.read_text().replace(
        "  vmvx:\n", "  broken:\n    backend: llvm-cpu\n    arch: host\n"
        "    flags: [--iree-no-such-flag]\n  vmvx:\n", 1))
    proc = project.doit("bisect", "model=mlp", "target=cpu", "against=broken", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    bisect = bisect_of(project.record(), "mlp@cpu")
    assert bisect["status"] == "failed"
    assert bisect["error"].startswith("no reference could be built: broken: not built: "
                                      "iree-compile exited with 1"), bisect["error"]
    assert "--iree-no-such-flag" in bisect["error"]
    assert "  bisect: bisect failed: no reference could be built" in proc.stdout
    unknown = project.doit("bisect", "model=mlp", "target=cpu", "against=nosuch", check=False)
    assert unknown.returncode != 0 and "against=nosuch: unknown target" in unknown.stderr


# a model whose first op scales its input past float16's largest value (65504)
SCALED = '''FRAMEWORK = "torch"


def build():
    import torch

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = torch.nn.Linear(16, 32)
            self.second = torch.nn.Linear(32, 8)

        def forward(self, x):
            return self.second(torch.relu(self.first(x * 1.0e5)) * 1.0e-5)

    return Scaled(), (torch.randn(2, 16),)
'''
F16_TARGET = ("  cpu-f16:\n    backend: llvm-cpu\n    arch: host\n"
              "    flags: [--iree-global-opt-demote-contraction-inputs-type=f16, "
              "--iree-global-opt-demote-contraction-inputs-operations=matmul]\n")


@needs_torch
def test_an_early_op_that_overflows_f16_is_named_with_its_infinity(project):
    (project.root / "models" / "scaled.py").write_text(SCALED)
    config = project.root / "targets.yaml"
    config.write_text(config.read_text().replace("  cuda:\n", F16_TARGET + "  cuda:\n", 1))
    proc = project.doit("validate", "model=scaled", "target=cpu-f16", check=False)
    assert proc.returncode != 0 and "NaN/Inf" in proc.stdout
    found = bisect_of(project.record(), "scaled@cpu-f16")["result"]
    first = found["first_bad_dispatch"]
    # the conversion of the scaled input to f16 is where infinity appears, not the matmul
    assert first["symbol"].endswith("_elementwise_32_f32xf16"), found["summary"]
    assert first["nonfinite"] > 0 and first["max_abs_error"] is None   # (JSON-safe)
    assert first["agreeing_before"] >= 1
    assert found["reference_target"] == "cpu" and first["partner"].endswith("_f32")
    assert f"NaN/Inf in {first['nonfinite']} elements where the reference has none" in \
        found["summary"]
    assert "Infinity" not in (project.root / "build" / "run.json").read_text()
