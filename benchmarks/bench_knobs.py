"""Whole-model iree-compile knobs against a start variant's flags, per model, in one
interleaved run: the evidence for the knobs stages/tune_knobs.py races (docs/DESIGN.md §9.8).

    .venv/bin/python benchmarks/bench_knobs.py --models vit,resnet50 [--start im2col]
        [--knobs all|tuned] [--rounds 5]

Per model (a zoo model of bench_tune's list, built into build/zoo): kiln emits it in a
project copy; each flag set (the start variant's flags, then with each knob) is compiled from
the input phase to a module; all are timed alternately in one loop (bench_variants.py's:
iree-benchmark-module on the model's captured inputs at the target's thread count, the
median of a run's repetitions). Prints per flag set the median of its ratios to the start in
the same round, and their range; a ratio below 1 is faster. Outputs are not compared here
(tune does, on every knob it keeps).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from bench_tune import MODELS, doit, place  # noqa: E402
from bench_variants import alternately, cpu  # noqa: E402
from conftest import copy_project  # noqa: E402

from stages import tune_knobs  # noqa: E402
from stages.backends import BACKENDS, CPU_VARIANTS  # noqa: E402
from stages.iree_tools import tool  # noqa: E402
from stages.targets import host_cpu  # noqa: E402

# knobs measured for §9.8 beside the ones tune races (which keeps those that ever won)
MORE = (tune_knobs.Knob("distribution 8", ("--iree-llvmcpu-distribution-size=8",)),
        tune_knobs.Knob("distribution 64", ("--iree-llvmcpu-distribution-size=64",)),
        tune_knobs.Knob("O3", ("--iree-opt-level=O3",)),
        tune_knobs.Knob("horizontal fusion",
                        ("--iree-dispatch-creation-enable-fuse-horizontal-contractions=true",)),
        tune_knobs.Knob("64 KiB matmul tiles", ("--iree-llvmcpu-matmul-tile-bytes=65536",)))


def flag_sets(start: str, which: str) -> dict[str, list[str]]:
    flags = list(dict(CPU_VARIANTS)[start])
    knobs = tune_knobs.KNOBS + (MORE if which == "all" else ())
    return {start: flags, **{knob.label: tune_knobs.with_knob(flags, knob) for knob in knobs}}


def build(emitted: Path, flags: list[str], out: Path) -> bool:
    """Compile the model from the input phase for this CPU with flags; False where it does
    not compile (said)."""
    cpu_backend = BACKENDS["llvm-cpu"]
    argv = [tool("iree-compile"), str(emitted / "model.mlirbc"), "--compile-from=input",
            *cpu_backend.flags, f"{cpu_backend.arch_flag}={host_cpu()}", *flags, "-o", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        print(f"  {out.stem}: does not compile: {done.stderr.strip().splitlines()[-1][:200]}")
    return done.returncode == 0


def one_model(root: Path, name: str, start: str, which: str, rounds: int) -> None:
    path = place(root, name, MODELS[name])
    model = Path(path).name
    doit(root, "emit", f"model={path}")
    emitted = root / "build" / model / "emit"
    work = root / "knobs" / model
    work.mkdir(parents=True, exist_ok=True)
    modules = {}
    for label, flags in flag_sets(start, which).items():
        module = work / f"{len(modules)}.vmfb"
        if build(emitted, flags, module):
            modules[label] = module
    # (bench_variants' loop: each module's median of a run's repetitions, every round;
    # no framework timed)
    times = alternately(root, model, modules, "", lambda tmp, threads: None, rounds)
    print(f"\n{name} from {start} (each set compiled from the input phase), load average "
          f"{os.getloadavg()[0]:.1f}:")
    for label, values in times.items():
        ratios = [t / s for t, s in zip(values, times[start])]
        print(f"  {label:22s} {statistics.median(values):9.3f} ms  {statistics.median(ratios):.3f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vit,mobilenetv2,resnet50,bert-base")
    parser.add_argument("--start", default="default", choices=[n for n, _ in CPU_VARIANTS])
    parser.add_argument("--knobs", default="all", choices=["all", "tuned"],
                        help="every knob measured for §9.8, or only those tune races")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"CPU: {cpu()}, {os.cpu_count()} logical CPUs; load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory(prefix="kiln-bench-knobs-") as tmp:
        root = copy_project(Path(tmp) / "proj")
        for name in args.models.split(","):
            one_model(root, name, args.start, args.knobs, args.rounds)


if __name__ == "__main__":
    main()
