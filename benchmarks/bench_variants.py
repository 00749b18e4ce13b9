"""The pick among flag variants, for ResNet-18 on cpu: each variant's latency, torch eager's,
and the ratio of the pick to torch eager, measured in one run on a throw-away project copy.

    .venv/bin/python benchmarks/bench_variants.py [--model resnet] [--rounds 3] [--avx2]

1. `doit -n 2 -P thread validate model=resnet target=cpu`: every variant compiled, validated,
   timed (the machine to itself for each timing), and the fastest that passed picked.
2. kiln's own figures from the record: each variant's median, the framework's, the pick.
3. A check that does not trust kiln's timing: every variant's module and torch eager timed
   again, alternately in one loop (--rounds rounds), medians of those.
Figures hold for this machine; the CPU and whether it has AVX-512 are printed first.

--avx2 holds both sides to AVX2 on an AVX-512 machine: the target compiles for znver3 (AVX2,
no AVX-512) and torch runs with ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2. That
measures the AVX2 code on this machine's cores and caches, not an AVX2-only machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from conftest import copy_project  # noqa: E402

ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
# --avx2: the llvm-cpu target's CPU, and what holds torch (ATen and oneDNN) to AVX2
AVX2_CPU = "znver3"
AVX2_TORCH = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def cpu() -> str:
    text = Path("/proc/cpuinfo").read_text()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return f"{name}, {'AVX-512' if 'avx512f' in flags else 'AVX2 only' if 'avx2' in flags else 'no AVX2'}"


def hold_to_avx2(root: Path, target: str) -> None:
    """The project copy's target compiles for an AVX2 CPU; torch, here and in the timing
    processes kiln starts, uses its AVX2 kernels."""
    import yaml
    config_file = root / "targets.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["targets"][target]["arch"] = AVX2_CPU
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    ENV.update(AVX2_TORCH)
    os.environ.update(AVX2_TORCH)


def build(root: Path, model: str, target: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "doit", "-n", "2", "-P", "thread", "validate",
                           f"model={model}", f"target={target}"], cwd=root, env=ENV,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"doit failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return time.perf_counter() - started


def loaded(root: Path, model: str) -> tuple[Path, dict, list, int]:
    """What timing a built model's modules needs: its emit directory, model.json, the
    captured inputs and the threads both sides get (the project's own stages imported)."""
    os.chdir(root)
    sys.path.insert(0, str(root))
    from stages import frameworks, timing
    emit = root / "build" / model / "emit"
    inputs = frameworks.load_arrays(root / "build" / model / "capture" / "inputs.npz")
    return emit, json.loads((emit / "model.json").read_text()), inputs, \
        timing.threads_for("local-task")


def module_median(tmp: Path, module: Path, emit: Path, info: dict, inputs: list,
                  threads: int) -> float:
    """One iree-benchmark-module run of a module on the model's inputs: its median (ms)."""
    from stages import timing
    from stages.iree_tools import tool
    from stages.runtime import module_args
    archive = emit / "model.irpa"
    args = module_args(tmp, module, archive if archive.stat().st_size else None, "local-task",
                       info["entry"], inputs)
    bench = [tool("iree-benchmark-module"), *args,
             *timing.iree_benchmark_flags(5, "local-task", threads)]
    report = json.loads(subprocess.run(bench, capture_output=True, text=True, check=True).stdout)
    return statistics.median(timing.iree_times(report))


def alternately(root: Path, model: str, modules: dict[str, Path], framework: str,
                time_framework, rounds: int) -> dict[str, list[float]]:
    """Each module and the framework (time_framework(tmp, threads) -> ms or None), timed
    alternately in one loop: every round's median, by name."""
    emit, info, inputs, threads = loaded(root, model)
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for name, module in modules.items():
                times.setdefault(name, []).append(
                    module_median(Path(tmp), module, emit, info, inputs, threads))
            ms = time_framework(Path(tmp), threads)
            if ms is not None:
                times.setdefault(framework, []).append(ms)
    return times


def again(root: Path, model: str, target: str, variants: list[dict], rounds: int) -> dict:
    """Every variant's module and the framework, timed alternately in one loop: medians."""
    def torch_eager(tmp, threads):
        from stages import timing
        figure, why = timing.framework_latency(
            "torch", root / "build" / model / "capture", threads, "", lambda line: None)
        if figure is None:
            sys.exit(f"torch eager could not be timed: {why}")
        return figure["median_ms"]

    modules = {v["variant"]: root / "build" / model / (
        target if v["variant"] == "default" else f"{target}~{v['variant']}") / "codegen" /
        "module.vmfb" for v in variants}
    times = alternately(root, model, modules, "torch eager", torch_eager, rounds)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--avx2", action="store_true",
                        help=f"compile for {AVX2_CPU} and hold torch to AVX2 (on an AVX-512 CPU)")
    args = parser.parse_args()
    print(f"CPU: {cpu()}, {os.cpu_count()} logical CPUs")
    if args.avx2:
        print(f"held to AVX2: target arch {AVX2_CPU}, torch with "
              + " ".join(f"{k}={v}" for k, v in AVX2_TORCH.items()))
    with tempfile.TemporaryDirectory(prefix="kiln-bench-variants-") as tmp:
        root = copy_project(Path(tmp) / "proj")
        if args.avx2:
            hold_to_avx2(root, args.target)
        seconds = build(root, args.model, args.target)
        record = json.loads((root / "build" / "run.json").read_text())["tasks"]
        pick = next(t for t in record if t["task"] == f"pick:{args.model}@{args.target}")["result"]
        framework = (pick.get("framework_latency") or {}).get("median_ms")
        print(f"\n1. cold build and search ({len(pick['variants'])} variants): {seconds:.0f} s")
        print(f"\n2. kiln's figures ({args.model} on {args.target}; median per call):")
        for v in pick["variants"]:
            ms = (v.get("latency") or {}).get("median_ms")
            mark = "  <- picked" if v["variant"] == pick["variant"] else ""
            print(f"   {v['variant']:14s} {v['outcome']:8s} "
                  + (f"{ms:8.2f} ms  {ms / framework:5.2f}x torch eager" if ms and framework
                     else "") + mark)
        print(f"   {'torch eager':14s} {'':8s} {framework:8.2f} ms")
        print(f"   why: {pick['why']}")
        print(f"   pick / torch eager: {pick['speed_ratio']:.2f}x")
        medians = again(root, args.model, args.target, pick["variants"], args.rounds)
        torch = medians.pop("torch eager")
        print(f"\n3. timed again, alternately in one loop ({args.rounds} rounds):")
        for name, ms in medians.items():
            print(f"   {name:14s} {ms:8.2f} ms  {ms / torch:5.2f}x torch eager")
        print(f"   {'torch eager':14s} {torch:8.2f} ms")
        print(f"   pick ({pick['variant']}) / torch eager: {medians[pick['variant']] / torch:.2f}x")


if __name__ == "__main__":
    main()
