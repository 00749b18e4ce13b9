"""kiln's pass rate on the model zoo, from a run's record, and whose each failure is.

    .venv/bin/python benchmarks/zoo/passrate.py [--record build/run.json] [--project .]
        [--config benchmarks/zoo/zoo.yaml] [--no-direct] [--time [--jobs N]]

Reads the record of `doit validate config=benchmarks/zoo/zoo.yaml matrix=zoo target=...`
(one row per model x target, as kiln's own summary table folds it: pipeline.report.table)
and prints, as markdown to paste into the README:
- the pass rate per framework and target, and how many cases stopped at each stage;
- whose each failure is. Where an IREE tool ran (legalize, lower, codegen, validate), the
  MLIR kiln handed to iree-compile is compiled again by hand (benchmarks/iree_direct.py):
  legalize's input, build/<model>/import/imported.mlirbc, with the framework's
  --iree-input-type; later stages' input, build/<model>/emit/model.mlirbc, from the input
  phase with the target's flags. A compiled module is run with iree-run-module on capture's
  inputs.npz and its weights (emit/model.irpa), and compared with capture's reference.npz
  within the target's tolerances (and capture's per-output ones, for quantized outputs).
  Failing so too, it is IREE's, printed with its direct commands; passing, kiln's own.
  At import, a TFLite or TF model's file (serialize's output, what kiln's import was given)
  goes through the importer's own command (tosa-converter-for-tflite; tar and
  iree-import-tf) and iree-compile: failing so too, it is the importer's, with those
  commands; passing, kiln's own.
  Before any IREE tool otherwise (capture, serialize, import, emit), the innermost frame of the
  stage log's traceback says whose code raised: the framework's, an importer's (IREE's or
  Arm's TFLite-to-TOSA converter), or kiln's own; a failure kiln words itself is the
  framework's importer's at import, else kiln's own;
- the geometric mean of IREE's latency over the framework's on every passing case, over
  all and per framework, and over onnxruntime's for every model X whose `X_onnx` partner
  (the same model exported to ONNX) has a framework latency: onnxruntime's;
- the CPU and the date. With --time it first makes the run itself, cold (a copy of the
  project with an empty cache, build/zoo linked in) and then again (the no-op), and prints
  both walls; the record read is that run's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
from bench_engine import cpu_name  # noqa: E402
from iree_direct import commands, outputs_match, run_steps, tool  # noqa: E402

# the stages where an IREE tool runs on the model (iree-compile, iree-run-module)
IREE_STAGES = ("legalize", "lower", "codegen", "validate", "pick")
# whose code raised, by the package of a traceback's innermost frame (first match wins)
IMPORTERS = (("iree/turbine", "IREE's (turbine importer)"),
             ("iree/tools/tf", "IREE's (TF importer)"),
             ("iree/compiler/extras", "IREE's (importer)"),
             ("iree/compiler", "IREE's (MLIR bindings)"),
             ("tosa_converter", "Arm's TFLite-to-TOSA converter"))
FRAMEWORK_PACKAGES = ("torch", "tensorflow", "keras", "jax", "jaxlib", "onnxruntime", "onnx",
                      "ai_edge_litert", "transformers")
OWNERS = (*IMPORTERS, *((f"{package}/", "the framework's") for package in FRAMEWORK_PACKAGES))
# who turns each framework's model into MLIR at import: a failure kiln words (no traceback)
# there is theirs
IMPORTER_OF = {"tf": "IREE's (TF importer)", "onnx": "IREE's (ONNX importer)",
               "torch": "IREE's (turbine importer)", "tflite": "Arm's TFLite-to-TOSA converter",
               "jax": "the framework's (its StableHLO export)"}
FRAME = re.compile(r'^\s*File "([^"]+)", line \d+')


@dataclass
class Case:
    """One model x target of the run: how it ended and, for a failure, whose it is."""
    model: str
    target: str
    framework: str
    kind: str                      # passed, failed, skipped, ...
    stage: str | None = None       # where it failed
    error: str = ""
    log: str | None = None         # the failed stage's log, relative to the project
    ms: float | None = None        # IREE's median latency
    framework_ms: float | None = None
    whose: str | None = None       # for a failure: IREE's, kiln's own, the framework's, ...
    direct: str = ""               # what the direct check found
    commands: list[str] = field(default_factory=list)
    # where the framework's own two implementations differ as much as IREE does from it
    implementation_defined: str = ""


# --- the record, as kiln folds it ------------------------------------------------------------

def read_cases(record: Path, project: Path) -> list[Case]:
    from pipeline.report.table import rows, short_error
    entries = json.loads(record.read_text())["tasks"]
    frameworks = frameworks_of({e["model"] for e in entries}, project)
    cases = []
    for row in rows(entries):
        failed = row["failed"] or {}
        cases.append(Case(
            row["model"], row["target"], frameworks.get(row["model"], "unknown"), row["kind"],
            stage=failed.get("stage") or (None if row["kind"] == "passed" else "validate"),
            error=short_error(failed.get("error")) if failed else row["outcome"],
            log=failed.get("log"), ms=row["ms"], framework_ms=row["framework_ms"]))
    return cases


def frameworks_of(models: set[str], project: Path) -> dict[str, str]:
    """model -> framework: a zoo folder's model file (kiln's own detection), else a
    models/ file's FRAMEWORK."""
    from pipeline.plan.models import discover
    from stages import detect
    found = {name: spec.framework for name, spec in discover([project / "models"], project).items()}
    zoo = project / "build" / "zoo"
    for model in models:
        folder = zoo / model
        if folder.is_dir():
            found[model] = next((fw for p in sorted(folder.iterdir())
                                 if not p.name.startswith(".") and (fw := detect(p))), "unknown")
    return found


# --- whose a failure is ----------------------------------------------------------------------

def classify(case: Case, project: Path, config: Path, work: Path, direct: bool = True) -> None:
    """Set case.whose (and, for a failure in an IREE tool, the direct check's finding and
    commands)."""
    if case.stage == "import" and case.framework in DIRECT_IMPORTERS and direct:
        passed, case.direct, case.commands = check_import_directly(case, project, config, work)
        case.whose = "kiln's own" if passed else IMPORTER_OF[case.framework]
        return
    if case.stage not in IREE_STAGES:
        case.whose = owner_from_log(project / case.log, case.stage, case.framework) \
            if case.log else "kiln's own (no log)"
        return
    if not direct:
        case.whose = "an IREE tool's (not checked directly)"
        return
    passed, case.direct, case.commands = check_directly(case, project, config, work)
    case.whose = "kiln's own" if passed else "IREE's"
    if not passed and case.implementation_defined:
        case.whose = "no one's: the framework's own kernels differ as much"
        case.direct += f"; {case.implementation_defined}"


def owner_from_log(log: Path, stage: str, framework: str) -> str:
    """Whose code failed, before any IREE tool ran. A Python exception (the log's last
    traceback): the package of its innermost frame, kiln's own where that is no package
    listed. A failure kiln put in words (no traceback, a verdict kiln checked): at import,
    the framework's importer's (e.g. TF ops IREE's TF importer left unconverted), else kiln's
    own (e.g. a dynamic shape it asks a size for)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "kiln's own (no log)"
    frames = [m.group(1) for line in text.splitlines() if (m := FRAME.match(line))]
    if not frames:
        return IMPORTER_OF.get(framework, "kiln's own") if stage == "import" else "kiln's own"
    innermost = frames[-1].replace(os.sep, "/")
    return next((who for package, who in OWNERS if f"/{package}" in innermost), "kiln's own")


def _tflite_import(serialized: Path, work: Path) -> tuple[list[list[str]], Path]:
    imported = work / "imported.mlirbc"
    return [[tool("tosa-converter-for-tflite"), str(serialized), "--bytecode", "-o",
             str(imported)]], imported


def _tf_import(serialized: Path, work: Path) -> tuple[list[list[str]], Path]:
    """The SavedModel kiln's import was given (serialize's tar), unpacked and imported by
    iree-import-tf with the signature and type kiln's import asks for."""
    from stages.frameworks.tf_fw import serving_signature
    saved, imported = work / "saved_model", work / "imported.mlir"
    unpack = [["mkdir", "-p", str(saved)], ["tar", "-xf", str(serialized), "-C", str(saved)]]
    ran, what = run_steps(unpack)   # (the signature's name is read from the unpacked model)
    name = serving_signature(saved) if ran else "serving_default"
    return [*unpack, [tool("iree-import-tf"), "--tf-import-type=savedmodel_v1",
                      f"--tf-savedmodel-exported-names={name}", "--tf-savedmodel-tags=serve",
                      str(saved), "-o", str(imported)]], imported


# framework -> its importer as a command (serialize's file, work) -> (steps, the MLIR written):
# the importers kiln runs in-process that have a command of their own
DIRECT_IMPORTERS = {"tflite": _tflite_import, "tf": _tf_import}


def check_import_directly(case: Case, project: Path, config: Path,
                          work: Path) -> tuple[bool, str, list[str]]:
    """(passed, what happened, the commands): the file kiln's import was given (serialize's
    output), imported by the importer's own command and compiled by iree-compile with the
    target's flags. Failing so too, the failure is the importer's (or, where only the
    compile fails, the importer's MLIR that IREE cannot take); passing, kiln's own."""
    from stages import frameworks
    from stages.targets import compile_flags
    adapter = frameworks.get(case.framework)
    serialized = project / "build" / case.model / "serialize" / adapter.serialized
    if not serialized.exists():
        return False, f"no {serialized} to import", []
    work = work / f"{case.model}.{case.target}"
    work.mkdir(parents=True, exist_ok=True)
    steps, imported = DIRECT_IMPORTERS[case.framework](serialized, work)
    steps.append([tool("iree-compile"), str(imported), f"--iree-input-type={adapter.input_type}",
                  *compile_flags(resolved_target(config, case.target)),
                  "-o", str(work / "module.vmfb")])
    ran, what = run_steps(steps, COMPILE_TIMEOUT_S)
    return ran, ("imports and compiles" if ran else what), commands(steps)


def check_directly(case: Case, project: Path, config: Path,
                   work: Path) -> tuple[bool, str, list[str]]:
    """(passed, what happened, the commands): the MLIR kiln handed iree-compile, compiled and
    run with IREE's own tools."""
    from stages import frameworks
    from stages.frameworks import load_arrays
    from stages.targets import compile_flags
    target = resolved_target(config, case.target)
    built = project / "build" / case.model
    work = work / f"{case.model}.{case.target}"   # ('@' in --module= would name a device)
    work.mkdir(parents=True, exist_ok=True)
    vmfb = work / "module.vmfb"
    flags = compile_flags(target)
    if case.stage == "legalize":   # the importer's MLIR, which legalize could not take
        source = built / "import" / "imported.mlirbc"
        if not source.exists():   # an .mlir model file enters at legalize: no import
            return False, f"no {source} to compile", []
        input_type = frameworks.get(case.framework).input_type
        step = [tool("iree-compile"), str(source), f"--iree-input-type={input_type}", *flags,
                "-o", str(vmfb)]
        ran, what = run_steps([step], COMPILE_TIMEOUT_S)
        return ran, ("compiles" if ran else what), commands([step])
    emitted = built / "emit"
    captured = built / "capture"
    entry = json.loads((emitted / "model.json").read_text())["entry"]
    said = json.loads((captured / "capture.json").read_text())
    inputs = load_arrays(captured / "inputs.npz")
    reference = load_arrays(captured / "reference.npz")
    import numpy as np
    for i, array in enumerate(inputs):
        np.save(work / f"in{i}.npy", array)
    count = said.get("model_outputs") or len(reference)
    outs = [work / f"out{i}.npy" for i in range(count)]
    archive = emitted / "model.irpa"
    steps = [[tool("iree-compile"), str(emitted / "model.mlirbc"), "--compile-from=input", *flags,
              "-o", str(vmfb)],
             [tool("iree-run-module"), f"--device={target.driver}", f"--module={vmfb}",
              f"--function={entry}",
              *([f"--parameters=model={archive}"] if archive.exists() and archive.stat().st_size
                else []),
              *(f"--input=@{work / f'in{i}.npy'}" for i in range(len(inputs))),
              *(f"--output=@{o}" for o in outs)]]
    ran, what = run_steps(steps, COMPILE_TIMEOUT_S)
    if not ran:
        return False, what, commands(steps)
    tolerances = [None if t is None else (float(t["atol"]), float(t.get("rtol", 0.0)))
                  for t in said.get("tolerances") or []] or None
    got = [np.load(o) for o in outs][:len(reference)]
    matched, what = outputs_match(got, reference, target.atol, target.rtol, tolerances,
                                  against="capture's reference.npz")
    if not matched:
        case.implementation_defined = own_spread(got, reference,
                                                 load_arrays(captured / "alternative.npz"))
    return matched, what, commands(steps)


def own_spread(got: list, reference: list, alternative: list) -> str:
    """Where the framework's own second implementation (LiteRT's reference kernels) is as far
    from its answer as IREE's module is (within the noise rule's factor): no one's fault but
    the model's numerics, which its two implementations already disagree on ('' if not)."""
    from stages.compare import FACTOR, float64_error
    for index, (mine, want, other) in enumerate(zip(got, reference, alternative)):
        error, spread = float64_error(mine, want), float64_error(other, want)
        if error and spread and error <= FACTOR * spread:
            return (f"the framework's own two kernel sets differ by {spread:.3g} on output "
                    f"{index}, IREE by {error:.3g}")
    return ""


COMPILE_TIMEOUT_S = 900


def resolved_target(config: Path, name: str):
    from pipeline.plan.config import load_config
    from stages.targets import resolve
    return resolve(load_config(config).targets[name.split("~")[0]])


# --- the tables ------------------------------------------------------------------------------

def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def ratios(cases: list[Case]) -> list[float]:
    return [c.ms / c.framework_ms for c in cases if c.kind == "passed" and c.ms and c.framework_ms]


def onnxruntime_ratios(cases: list[Case]) -> dict[tuple[str, str], float]:
    """(model, target) -> IREE's latency of X over onnxruntime's on X_onnx, the same model
    exported to ONNX, for every passing X whose partner has a framework latency."""
    by_key = {(c.model, c.target): c for c in cases}
    found = {}
    for case in cases:
        partner = by_key.get((f"{case.model}_onnx", case.target))
        if case.kind == "passed" and case.ms and partner and partner.framework_ms:
            found[(case.model, case.target)] = case.ms / partner.framework_ms
    return found


def times(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}×"


def report(cases: list[Case], record: Path, walls: dict | None = None) -> str:
    lines = [(f"Model zoo through kiln: {record}; {cpu_name()}, {os.cpu_count()} cores, "
              f"{time.strftime('%Y-%m-%d')}."), ""]
    if walls:
        lines += [(f"`{walls['command']}`: cold {walls['cold']:.0f} s, "
                   f"no-op {walls['noop']:.2f} s."), ""]
    lines += ["| framework | target | cases | passed | pass rate | skipped | "
              "IREE/framework (geomean) |", "|---|---|---|---|---|---|---|"]
    targets = sorted({c.target for c in cases})
    groups = sorted({(c.framework, c.target) for c in cases})
    for framework, target in [*groups, *(("all", t) for t in targets), ("all", "all")]:
        chosen = [c for c in cases
                  if framework in ("all", c.framework) and target in ("all", c.target)]
        passed = sum(c.kind == "passed" for c in chosen)
        skipped = sum(c.kind == "skipped" for c in chosen)   # no device: not in the rate
        ran = len(chosen) - skipped
        rate = f"{100 * passed / ran:.0f}%" if ran else ""
        lines.append(f"| {framework} | {target} | {len(chosen)} | {passed} | {rate} | "
                     f"{skipped} | {times(geomean(ratios(chosen)))} |")
    stages: dict[tuple[str, str], int] = {}
    for case in cases:
        if case.kind not in ("passed", "skipped"):
            key = (case.stage or case.kind, case.whose or case.kind)
            stages[key] = stages.get(key, 0) + 1
    if stages:
        lines += ["", "| failed at | whose | cases |", "|---|---|---|"]
        lines += [f"| {stage} | {whose} | {n} |" for (stage, whose), n in sorted(stages.items())]
    against_ort = onnxruntime_ratios(cases)
    if against_ort:
        lines += ["", "| model | target | IREE / onnxruntime on its `_onnx` export |",
                  "|---|---|---|"]
        lines += [f"| {m} | {t} | {times(r)} |" for (m, t), r in sorted(against_ort.items())]
        lines.append(f"| geometric mean | | {times(geomean(list(against_ort.values())))} |")
    failures = [c for c in cases if c.kind == "failed"]
    if failures:
        lines += ["", "| model | target | framework | failed at | whose | error | directly |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {c.model} | {c.target} | {c.framework} | {c.stage} | {c.whose} | "
                  f"{cell(c.error)} | {cell(c.direct)} |" for c in failures]
    for case in failures:
        if case.commands:
            lines += ["", f"{case.model}@{case.target} ({case.whose}), directly:", "",
                      *(f"    {command}" for command in case.commands)]
    return "\n".join(lines)


def cell(text: str, width: int = 160) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:width]


# --- --time: the run itself, cold and no-op ---------------------------------------------------

def timed_run(config: Path, root: Path, jobs: int) -> tuple[Path, dict]:
    """The zoo validated cold in a copy of this project at root (an empty cache; build/zoo is
    a link to this project's), then again: (the copy, the command and both walls)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import copy_project, without_kiln_settings
    project = copy_project(root / "proj")
    relative = config.resolve().relative_to(REPO)
    (project / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(config, project / relative)
    (project / "build").mkdir(exist_ok=True)
    (project / "build" / "zoo").symlink_to(REPO / "build" / "zoo")
    env = without_kiln_settings(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # (stages in parallel: kiln still times one module or framework at a time)
    parallel = ["-n", str(jobs), "-P", "thread"] if jobs > 1 else []
    args = [*parallel, "validate", f"config={relative}", "matrix=zoo", "target=cpu"]
    walls = {"command": f"doit {' '.join(args)}"}
    for run in ("cold", "noop"):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "doit", *args], cwd=project, env=env,
                       capture_output=True, check=False)
        walls[run] = time.perf_counter() - started
    return project, walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=REPO, help="the project that ran")
    parser.add_argument("--record", type=Path, help="default: <project>/build/run.json")
    parser.add_argument("--config", type=Path, default=HERE / "zoo.yaml",
                        help="the configuration the run used (its targets' flags and tolerances)")
    parser.add_argument("--no-direct", action="store_true",
                        help="do not check failures with IREE's tools directly")
    parser.add_argument("--time", action="store_true",
                        help="make the run first, cold and no-op, and print both walls")
    parser.add_argument("--jobs", type=int, default=1, help="with --time: doit -n (stages in "
                        "parallel)")
    parser.add_argument("--keep", type=Path,
                        help="keep the direct checks' modules and arrays here (default: a "
                             "temporary folder, so the printed commands' files are gone)")
    args = parser.parse_args()
    walls = None
    if args.time:
        args.project, walls = timed_run(args.config, Path(tempfile.mkdtemp(prefix="zoo-run-")),
                                          args.jobs)
        args.config = args.project / args.config.resolve().relative_to(REPO)
    record = args.record or args.project / "build" / "run.json"
    if not record.is_file():
        sys.exit(f"{record}: no run record; run `doit validate config=benchmarks/zoo/zoo.yaml "
                 "matrix=zoo target=cpu` first, or give --record / --project")
    cases = read_cases(record, args.project)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.keep or Path(temporary)
        for case in cases:
            if case.kind == "failed":
                classify(case, args.project, args.config, work, not args.no_direct)
    print(report(cases, record, walls))


if __name__ == "__main__":
    main()
