"""Validate's float64 noise rule on real builds (stages/compare.py's noise_rule): a deep
random-weight CNN whose f32 rounding noise a fixed tolerance mistakes for an error passes by
the rule, and a genuinely wrong target (the mlp with its matmuls demoted to bf16) still fails.
The rule's numbers themselves are tested in test_compare."""
from __future__ import annotations

import json

from conftest import BF16_FLAGS, needs_torch

# 20 convolutions of 4 channels on an 8x8 image, weights scaled up so that activations grow
# (output ~1e3): each layer's f32 rounding adds up, ~1e-6 relative, over 100x a tolerance of
# rtol 1e-6. Compiles in seconds.
DEEP_CNN = '''FRAMEWORK = "torch"


def build():
    import torch
    torch.manual_seed(0)
    layers = []
    for i in range(20):
        conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        layers += [conv, torch.nn.ReLU()] if i % 2 else [conv]
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3.0)
    return model, (torch.randn(1, 4, 8, 8),)
'''

# `tight`: a fixed tolerance that deep-net noise breaks; `bf16`: cpu with demoted matmuls
TARGETS = ("  tight:\n    backend: llvm-cpu\n    arch: host\n    atol: 1.0e-6\n    rtol: 1.0e-6\n"
           "  bf16:\n    backend: llvm-cpu\n    arch: host\n" + BF16_FLAGS +
           "    atol: 1.0e-4\n    rtol: 1.0e-3\n")


def task(project, model: str, target: str) -> dict:
    """The run record's validate entry (a failed validate keeps its result there only)."""
    return next(t for t in project.record() if t["task"] == f"validate:{model}@{target}")


@needs_torch
def test_deep_net_noise_passes_by_the_float64_rule_and_a_bf16_matmul_fails(project):
    (project.root / "models" / "deep_cnn.py").write_text(DEEP_CNN)
    config = project.root / "targets.yaml"
    config.write_text(config.read_text().replace("targets:\n", "targets:\n" + TARGETS, 1))
    proc = project.doit("validate", "model=deep_cnn,mlp", "target=tight,bf16", check=False)
    statuses = project.statuses()
    captured = json.loads((project.root / "build" / "deep_cnn" / "capture" / "capture.json")
                          .read_text())
    assert captured["f64"]["available"] and captured["f64"]["framework_error"][0] > 0

    deep = task(project, "deep_cnn", "tight")["result"]
    assert statuses["validate:deep_cnn@tight"] == "ran", proc.stdout[-3000:]
    assert deep["rule"] == "f64-noise" and deep["passed"]
    output = deep["outputs"][0]
    assert output["tolerance_passed"] is False   # atol/rtol 1e-6 alone fails it
    assert output["max_abs_error"] > 1e-6 + 1e-6 * 800
    assert deep["framework_error"] == captured["f64"]["framework_error"][0]
    assert deep["target_error"] > 0 and deep["factor"] <= deep["factor_allowed"]

    wrong = task(project, "mlp", "bf16")["result"]
    assert statuses["validate:mlp@bf16"] == "failed"
    assert wrong["rule"] == "f64-noise" and not wrong["passed"]
    assert wrong["factor"] > 10 * wrong["factor_allowed"]
    error = task(project, "mlp", "bf16")["error"]
    assert "error vs float64" in error and f"(allowed {wrong['factor_allowed']:g}x)" in error
