"""Per-dispatch tuning (stages/tune.py) against the variants and the framework, per model,
in one run on a throw-away project copy:

    .venv/bin/python benchmarks/bench_tune.py [--models mobilenetv2,vit] [--budget 480]
        [--rounds 3] [--variants default,im2col,...]

Per model (a zoo model built by benchmarks/zoo/build.py into build/zoo, or KILN_ZOO's):
1. `doit validate model=M target=cpu tune=on tune_budget=B`: every variant compiled,
   validated and timed, the tuned variant tuned from the fastest of them, validated, timed,
   and the pick made; the wall time and tune.json's cost and candidate count;
2. the tuning again with another budget (another key: the stage runs), its answers from the
   cache: its cost;
3. the default module, the best other variant's, the tuned module and the framework's own
   run (onnxruntime for ONNX, LiteRT for TFLite) timed again alternately in one loop
   (--rounds), medians with the spread of the rounds.
Figures hold for this machine under its load at the time (printed): other work on a shared
machine widens every spread, most of all the framework's thread pools'.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from bench_variants import alternately, cpu  # noqa: E402
from conftest import copy_project  # noqa: E402

ZOO = Path(os.environ.get("KILN_ZOO", REPO / "build" / "zoo"))
# the models the issue names, and the zoo's with an onnxruntime twin: name -> zoo case
MODELS = {"resnet50": "hf_resnet50_onnx", "bert-base": "hf_bert_base_onnx",
          "mobilenetv2": "keras_mobilenetv2_tflite", "vit": "hf_vit_onnx",
          "distilbert": "hf_distilbert_onnx", "roberta": "hf_roberta_onnx",
          "mobilenetv2-onnx": "hf_mobilenet_v2_onnx", "t5": "hf_t5_onnx",
          "bert-base-tiny": "hf_bert_base_onnx"}
TRANSFORMERS = {"bert-base", "vit", "distilbert", "roberta", "t5"}
ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def place(root: Path, name: str, case: str) -> str:
    """The zoo case linked into the project under the model's name (every zoo case's file is
    model.onnx or model.tflite: kiln names a model by its file); its companions beside it."""
    source = ZOO / case
    folder = root / "bench_models"
    folder.mkdir(exist_ok=True)
    model = next(p for p in source.iterdir() if p.stem == "model")
    for companion in source.iterdir():
        beside = folder / companion.name
        if companion != model and not companion.name.startswith(".") and not beside.is_symlink():
            beside.symlink_to(companion)
    linked = folder / f"{name}{model.suffix}"
    if not linked.is_symlink():
        linked.symlink_to(model)
    return str(linked)


def doit(root: Path, *args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=root, env=ENV,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"doit {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


def record(root: Path, task: str) -> dict:
    tasks = json.loads((root / "build" / "run.json").read_text())["tasks"]
    return next(((t.get("result") or {}) for t in tasks if t["task"] == task), {})


def tune_json(root: Path, model: str) -> dict:
    return json.loads((root / "build" / model / "cpu~tuned" / "tune" / "tune.json").read_text())


def module_of(root: Path, model: str, variant: str) -> Path:
    where = "cpu" if variant == "default" else f"cpu~{variant}"
    stage = "tune" if variant == "tuned" else "codegen"
    return root / "build" / model / where / stage / "module.vmfb"


def interleaved(root: Path, model: str, framework: str, variants: list[str], rounds: int) -> dict:
    """Each variant's module and the framework, alternately in one loop: every round's median."""
    def framework_ms(tmp: Path, threads: int) -> float | None:
        figure = framework_once(root, model, framework, threads, tmp / "fw.json")
        return figure and figure["median_ms"]

    modules = {v: module_of(root, model, v) for v in variants}
    return alternately(root, model, modules, framework, framework_ms, rounds)


def framework_once(root: Path, model: str, framework: str, threads: int, out: Path) -> dict | None:
    """The framework's own run timed in a fresh process (stages/timing.py's), every round."""
    subprocess.run([sys.executable, "-m", "stages.timing", framework,
                    str(root / "build" / model / "capture"), str(threads), str(out)],
                   cwd=root, env=ENV, capture_output=True, text=True)
    try:
        figure = json.loads(out.read_text())
    except (OSError, ValueError):
        return None
    return None if figure.get("why") else figure


def one_model(root: Path, name: str, budget: float, rounds: int, variants: str | None) -> dict:
    path = place(root, name, MODELS[name])
    model = Path(path).name
    selection = [f"variants={variants},tuned"] if variants else []
    common = [f"model={path}", "target=cpu", "tune=on"]
    first = doit(root, "validate", *common, *selection, f"tune_budget={budget:g}")
    tuned = tune_json(root, model)
    pick = record(root, f"pick:{model}@cpu")
    passed = {v["variant"]: v["latency"]["median_ms"] for v in pick.get("variants", [])
              if v["outcome"] == "passed" and v.get("latency")}
    others = {v: ms for v, ms in passed.items() if v != "tuned"}
    best = min(others, key=others.get) if others else "default"
    framework = pick_framework(path)
    chosen = list(dict.fromkeys(["default", best, "tuned"]))
    # timed before the second tuning, which writes its own module over the first's
    times = interleaved(root, model, framework, chosen, rounds)
    # (where tuning kept nothing, the tuned module is the best variant's byte for byte: any
    # ratio between the two is this loop's own noise)
    same = module_of(root, model, "tuned").read_bytes() == module_of(root, model, best).read_bytes()
    again = doit(root, "tune", *common, *selection, f"tune_budget={budget + 0.5:g}")
    second = tune_json(root, model)
    return {"model": name, "kind": "transformer" if name in TRANSFORMERS else "cnn",
            "first_build_s": first, "tune_s": tuned["seconds"],
            "candidates": tuned["candidates_compiled"], "applied": tuned["applied"],
            "dispatches": tuned["dispatch_count"], "start": tuned["start"],
            "second_tune_s": second["seconds"], "second_from_cache": second["from_cache"],
            "second_benchmarks": second["benchmarks_run"], "second_doit_s": again,
            "best": best, "pick": pick.get("variant"), "framework": framework,
            "kept": (tuned.get("whole_module") or {}).get("kept"),
            "knobs": tuned.get("knobs"), "second_knobs": (second.get("knobs") or {}).get("from_cache"),
            "kiln_figures": passed, "times": times, "same_as_best": same, "holding_back": holding_back(tuned)}


# a matmul-like dispatch's shape in its name: ..._matmul_256x196x2304_f32 (M x N x K),
# ..._batch_matmul_12x128x64x128_f32 (B x M x N x K)
MATMUL = re.compile(r"_(batch_)?matmul(?:_transpose_b)?_((?:\d+x)+\d+)_")


def peak_gflops() -> float:
    """The CPU's f32 peak at kiln's thread count: threads x clock x 2 FMA units x the vector
    lanes x 2 (an FMA is two FLOPs). An assumption, from /proc/cpuinfo's clock (no turbo);
    a dispatch above it means the machine has more."""
    from stages import timing
    cpuinfo = Path("/proc/cpuinfo").read_text()
    mhz = next((float(line.split(":")[1]) for line in cpuinfo.splitlines()
                if line.startswith("cpu MHz")), 0.0)
    lanes = 16 if "avx512f" in cpuinfo else 8
    return timing.threads_for("local-task") * mhz / 1000 * 2 * lanes * 2


def holding_back(tune: dict, top: int = 5) -> list[str]:
    """The dispatches that carry the tuned module's time, each with its GFLOP/s where its
    name gives a matmul's shape, against the CPU's peak."""
    peak, lines = peak_gflops(), []
    for row in tune["dispatches"][:top]:
        # (a dispatch's winner counts only where the whole module kept the winners)
        ms = (tune["applied"] and row.get("tuned_ms")) or row.get("default_ms")
        if not ms:
            continue
        op = re.sub(r"^.*dispatch_\d+_", "", row["op"])
        shape = MATMUL.search(row["op"])
        rate = ""
        if shape:
            dims = [int(d) for d in shape.group(2).split("x")]
            flops = 2 * dims[0] * dims[1] * dims[2] * (dims[3] if len(dims) > 3 else 1)
            gflops = flops / (ms / 1000) / 1e9
            rate = f", {gflops:.0f} GFLOP/s = {gflops / peak:.0%} of {peak:.0f}"
        lines.append(f"    {op}: {row['share']:.0%} of the time, {ms:.3g} ms x {row['calls']}{rate}")
    return lines


def pick_framework(path: str) -> str:
    return {".onnx": "onnx", ".tflite": "tflite"}.get(Path(path).suffix, "torch")


def show(row: dict) -> None:
    def fig(values):
        if not values:
            return "      n/a        "
        return f"{statistics.median(values):8.2f} ({min(values):.3g}-{max(values):.3g})"
    t = row["times"]
    best, framework = row["best"], row["framework"]
    med = {k: statistics.median(v) for k, v in t.items() if v}
    print(f"\n{row['model']} ({row['kind']}): pick took {row['pick']}; tuned from {row['start']}"
          + ("" if row["applied"] else " (no dispatch re-tiled: the tuned module is the start's flags, knob included, as compiled)"))
    print(f"  default      {fig(t.get('default'))} ms")
    print(f"  best {best:12s}{fig(t.get(best))} ms")
    print(f"  tuned        {fig(t.get('tuned'))} ms   tuned/best "
          f"{med['tuned'] / med[best]:.2f}x" + (" (the same module, byte for byte: the "
                                                 "loop's noise)" if row["same_as_best"] else "")
          if "tuned" in med and best in med else "")
    print(f"  {framework:12s} {fig(t.get(framework))} ms" +
          (f"   tuned/{framework} {med['tuned'] / med[framework]:.2f}x"
           if framework in med and "tuned" in med else ""))
    knobs = row.get("knobs") or {}
    if knobs.get("tried"):
        raced = ", ".join(f"{k['knob']} {k['ratio']:.2f}x" if k.get("ratio") else
                          f"{k['knob']} (outputs differ)" for k in knobs["tried"])
        print(f"  whole-model knobs ({knobs['seconds']:.0f} s): {raced}; chosen: "
              f"{knobs['chosen'] or 'none'}")
    print("  largest dispatches (alone, iree-benchmark-module), against the CPU's peak:")
    print("\n".join(row["holding_back"]))
    print(f"  tuning: {row['tune_s']:.0f} s, {row['candidates']} candidates compiled, "
          f"{row['applied']} of {row['dispatches']} dispatches changed; second tuning "
          f"{row['second_tune_s']:.1f} s ({row['second_from_cache']} from the cache, knobs "
          f"{row['second_knobs'] or 'not'} cached, "
          f"{row['second_benchmarks']} benchmarks); first build {row['first_build_s']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--budget", type=float, default=480.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=None,
                        help="the variants to try besides tuned (default: every one)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--project", default=None,
                        help="a project copy to build in and keep (its cache makes a rerun "
                             "cheap; default: a temporary one)")
    args = parser.parse_args()
    print(f"CPU: {cpu()}, {os.cpu_count()} logical CPUs; load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-tune-") as tmp:
        kept = Path(args.project) if args.project else None
        root = kept if kept and kept.is_dir() else copy_project(kept or Path(tmp) / "proj")
        for name in args.models.split(","):
            rows.append(one_model(root, name, args.budget, args.rounds, args.variants))
            show(rows[-1])
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    for kind in ("cnn", "transformer"):
        ratios = [statistics.median(r["times"]["tuned"]) / statistics.median(r["times"][r["best"]])
                  for r in rows if r["kind"] == kind and r["times"].get("tuned")]
        exact = [1.0 if r.get("same_as_best") else
                 statistics.median(r["times"]["tuned"]) / statistics.median(r["times"][r["best"]])
                 for r in rows if r["kind"] == kind and r["times"].get("tuned")]
        if ratios:
            print(f"{kind}s: tuned / best variant, geomean of {len(ratios)}: "
                  f"{statistics.geometric_mean(ratios):.2f}x as timed, "
                  f"{statistics.geometric_mean(exact):.2f}x with a byte-identical module at 1.00x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
