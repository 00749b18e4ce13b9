"""benchmarks/zoo/passrate.py on a real run: the session's `frameworks` run (conftest's
frameworks_run: one model per framework on cpu and vulkan, timed, plus `bessel`, whose op
IREE cannot legalize). Its rows are folded as kiln's summary folds them, each failure is
checked again with IREE's own tools on the MLIR kiln built, and the tables aggregate them."""
from __future__ import annotations

import dataclasses
import sys
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks" / "zoo"))
import passrate  # noqa: E402

FRAMEWORKS = {"mlp": "torch", "bessel": "torch", "jax_mlp": "jax", "tf_mlp": "tf",
              "tflite_cnn": "tflite", "onnx_cnn": "onnx"}


@pytest.fixture(scope="module")
def run(frameworks_run, tmp_path_factory) -> dict:
    """The run's cases, each failure classified (its direct commands run once here)."""
    root = frameworks_run["project"].root
    cases = passrate.read_cases(frameworks_run["record_file"], root)
    work = tmp_path_factory.mktemp("direct")
    for case in cases:
        if case.kind == "failed":
            passrate.classify(case, root, root / "targets.yaml", work)
    return {"root": root, "cases": cases, "by": {(c.model, c.target): c for c in cases}}


def test_every_case_is_a_row_with_its_framework(run, frameworks_run):
    assert sorted(run["by"]) == sorted((m, t) for m in frameworks_run["models"]
                                       for t in frameworks_run["targets"])
    assert {c.model: c.framework for c in run["cases"]} == FRAMEWORKS


def test_a_legalize_failure_that_iree_compile_repeats_is_irees_with_its_command(run):
    bessel = run["by"][("bessel", "cpu")]
    assert (bessel.kind, bessel.stage, bessel.whose) == ("failed", "legalize", "IREE's")
    assert bessel.direct.startswith("iree-compile exited with 1")
    [command] = bessel.commands
    imported = run["root"] / "build" / "bessel" / "import" / "imported.mlirbc"
    assert f"iree-compile {imported} --iree-input-type=torch" in command
    assert "--iree-llvmcpu-target-cpu=" in command
    assert {c.whose for c in run["cases"] if c.kind == "failed"} == {"IREE's"}


def test_a_case_iree_runs_and_matches_directly_would_be_kilns_own(run, tmp_path):
    """The passing mlp, taken as failed at validate: compiled from emit's MLIR, run on
    capture's inputs with its weights and compared with reference.npz, it passes: so a
    failure there would have been kiln's."""
    case = dataclasses.replace(run["by"][("mlp", "cpu")], kind="failed", stage="validate")
    passrate.classify(case, run["root"], run["root"] / "targets.yaml", tmp_path)
    assert (case.whose, case.direct) == ("kiln's own", "passes")
    compile_, run_module = case.commands
    assert "emit/model.mlirbc --compile-from=input" in compile_
    assert "--device=local-task" in run_module and "--parameters=model=" in run_module


@pytest.mark.parametrize("model, importer", [("tflite_cnn", "tosa-converter-for-tflite"),
                                             ("tf_mlp", "iree-import-tf")])
def test_an_import_the_importers_own_command_passes_would_be_kilns_own(run, tmp_path, model,
                                                                         importer):
    """The passing TFLite and TF models, taken as failed at import: serialize's file through
    the importer's command and iree-compile passes, so such a failure would be kiln's."""
    case = dataclasses.replace(run["by"][(model, "cpu")], kind="failed", stage="import")
    passrate.classify(case, run["root"], run["root"] / "targets.yaml", tmp_path)
    assert (case.whose, case.direct) == ("kiln's own", "imports and compiles"), case
    assert any(f"/{importer} " in command for command in case.commands), case.commands
    assert f"build/{model}/serialize/" in " ".join(case.commands)
    assert "--iree-input-type=" in case.commands[-1]


def test_an_import_the_converter_refuses_directly_too_is_the_converters(run, tmp_path):
    """A .tflite the converter cannot read, as serialize would have left it: its own command
    fails too, so the failure is the converter's, printed with that command."""
    project = tmp_path / "project"
    serialized = project / "build" / "broken" / "serialize" / "model.tflite"
    serialized.parent.mkdir(parents=True)
    serialized.write_bytes(b"TFL3" + bytes(60))
    case = passrate.Case("broken", "cpu", "tflite", "failed", stage="import")
    passrate.classify(case, project, run["root"] / "targets.yaml", tmp_path / "work")
    assert case.whose == "Arm's TFLite-to-TOSA converter"
    assert case.direct.startswith("tosa-converter-for-tflite exited"), case.direct
    assert str(serialized) in case.commands[0]


def test_who_failed_before_iree_is_read_from_the_log(tmp_path):
    """A Python exception: the package of its innermost frame (here JAX's own, raised for
    real); a failure kiln words itself: the importer's at import, else kiln's own."""
    import jax.numpy as jnp
    try:
        jnp.ones(2) @ jnp.ones(3)
    except TypeError:
        framework_log = tmp_path / "capture.x.log"
        framework_log.write_text("task: capture:x\nstatus: failed\n" + traceback.format_exc())
    worded = tmp_path / "worded.log"
    worded.write_text("task: import:x\nstatus: failed\nerror: TF ops IREE's TF importer did not "
                      "convert to StableHLO: tf_device.cluster_func\n")
    assert passrate.owner_from_log(framework_log, "capture", "jax") == "the framework's"
    assert passrate.owner_from_log(worded, "import", "tf") == "IREE's (TF importer)"
    assert passrate.owner_from_log(worded, "capture", "tf") == "kiln's own"


def test_the_tables_count_rates_stages_and_latency_ratios(run):
    cases = run["cases"]
    text = passrate.report(cases, run["root"] / "build" / "run.json")
    assert "| torch | cpu | 2 | 1 | 50% | 0 |" in text
    assert "| all | all | 12 | 10 | 83% | 0 |" in text
    assert "| legalize | IREE's | 2 |" in text
    assert "iree-compile " in text and "imported.mlirbc" in text
    # the geometric mean of the passing cases' IREE/framework ratios
    passed = [c for c in cases if c.kind == "passed"]
    assert all(c.ms and c.framework_ms for c in passed)
    expected = passrate.geomean([c.ms / c.framework_ms for c in passed])
    assert f"| all | all | 12 | 10 | 83% | 0 | {expected:.3g}× |" in text
    cpu = passrate.geomean([c.ms / c.framework_ms for c in passed if c.target == "cpu"])
    assert f"| all | cpu | 6 | 5 | 83% | 0 | {cpu:.3g}× |" in text


def test_a_model_with_an_onnx_partner_is_timed_against_onnxruntime(run):
    """onnx_cnn's measured onnxruntime latency, as the partner `mlp_onnx` of the mlp."""
    cases = run["cases"]
    partner = dataclasses.replace(run["by"][("onnx_cnn", "cpu")], model="mlp_onnx")
    mlp = run["by"][("mlp", "cpu")]
    found = passrate.onnxruntime_ratios([*cases, partner])
    assert found == {("mlp", "cpu"): mlp.ms / partner.framework_ms}
    assert "| mlp | cpu | " in passrate.report([*cases, partner], Path("run.json"))


def test_a_failure_the_frameworks_own_kernels_share_is_no_ones():
    import numpy as np
    reference = [np.array([1.0, 5.0, -2.0], np.float32)]
    iree = [np.array([1.0, 6.7, -2.0], np.float32)]           # 1.7 off
    shared = passrate.own_spread(iree, reference, [np.array([1.0, 6.5, -2.0], np.float32)])
    assert shared == "the framework's own two kernel sets differ by 1.5 on output 0, IREE by 1.7"
    assert passrate.own_spread(iree, reference, [reference[0] + np.float32(1e-3)]) == ""
    assert passrate.own_spread(iree, reference, []) == ""   # no second implementation


def test_a_direct_tool_that_crashes_is_named_by_the_function_it_crashed_in():
    """iree-compile on the ConvNeXt SavedModel's import crashes with a backtrace and no error
    line (its stderr's shape, shortened): the finding names where, not the last frame."""
    from iree_direct import first_error
    crash = ("Please report issues to https://github.com/iree-org/iree/issues and include the "
             "crash backtrace.\n"
             " #0 0x00007f85b4b5a0ab llvm::sys::PrintStackTrace(llvm::raw_ostream&, int) "
             "Signals.cpp:0:0\n"
             " #2 0x00007f85b4b5ac10 SignalHandler(int, siginfo_t*, void*) Signals.cpp:0:0\n"
             " #3 0x00007f85aec5a050 (/lib/x86_64-linux-gnu/libc.so.6+0x3c050)\n"
             " #4 0x00007f85b6994f70 mlir::iree_compiler::DispatchCreation::"
             "decideFusableLinalgOps(mlir::Region&) FormDispatchRegions.cpp:0:0\n"
             " #5 0x00007f85b5109731 mlir::detail::OpToOpPassAdaptor::run(mlir::Pass*) "
             "Pass.cpp:0:0\n")
    assert first_error(crash) == \
        "crashed in mlir::iree_compiler::DispatchCreation::decideFusableLinalgOps"
    assert first_error("note: x\n<unknown>:0: error: 'linalg.generic' op inferred\n") == \
        "<unknown>:0: error: 'linalg.generic' op inferred"
    assert first_error("INVALID_ARGUMENT; bad input\nlast") == "INVALID_ARGUMENT; bad input"
