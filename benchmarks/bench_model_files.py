"""Plan-time cost of a big model file: `doit list` of a ~1 GB ONNX model with its weights
inline against a tiny one, in one throw-away project.

    .venv/bin/python benchmarks/bench_model_files.py [--gb 1.0] [--repeat 5]

Making the plan asks the stages about each model file; for ONNX that parses the protobuf
(onnx.load, external data not read), which for a 1 GB file is the whole gigabyte. The plan is
made whenever a stage runs or the plan memo is stale, so the benchmark makes it on every run
(KILN_PLAN_MEMO=0) and times `doit list model=<file>` for each model, alternately, after one
run each that fills the model-facts memo (build/.kiln/model-facts.json). It prints the
median of each and their ratio (big / small, goal about 1.0), then the same once with
KILN_MODEL_FACTS=0 (every hook asked: what the memo saves), and the no-op view: the plan
memo on, each model's runs in turn.
Nothing is compiled. The model is written to a temporary directory, removed afterwards; the
run stops before writing when the disk or memory cannot hold it (about 1.2x and 3x --gb).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import copy_project  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
ENV["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
GB = 1e9


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def available_memory() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0.0


def check_room(where: Path, size: float) -> None:
    free = shutil.disk_usage(where).free
    if free < 1.2 * size + 0.5 * GB:
        sys.exit(f"not enough disk in {where}: {free / GB:.1f} GB free, "
                 f"{(1.2 * size + 0.5 * GB) / GB:.1f} GB needed (use --gb or TMPDIR)")
    if available_memory() < 3 * size:
        sys.exit(f"not enough memory to write the model: {available_memory() / GB:.1f} GB "
                 f"available, {3 * size / GB:.1f} GB needed (use --gb)")


def write_onnx(path: Path, elements: int) -> None:
    """y = x + w, w an initializer of `elements` float32 kept inline (raw_data)."""
    from onnx import TensorProto, helper, save
    weight = helper.make_tensor("w", TensorProto.FLOAT, [elements], bytes(4 * elements), raw=True)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [elements])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [elements])], initializer=[weight])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def doit_list(root: Path, model: Path, plan_memo: bool = False, facts: bool = True) -> float:
    env = dict(ENV, **({} if plan_memo else {"KILN_PLAN_MEMO": "0"}),
               **({} if facts else {"KILN_MODEL_FACTS": "0"}))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "doit", "list", f"model={model}", "target=cpu",
                           "variants=default"], cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0 or "capture" not in proc.stdout:
        sys.exit(f"doit list model={model} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def alternate(root: Path, big: Path, small: Path, repeat: int, **how) -> tuple[float, float]:
    times: dict[Path, list[float]] = {big: [], small: []}
    for _ in range(repeat):
        for model in (big, small):
            times[model].append(doit_list(root, model, **how))
    return statistics.median(times[big]), statistics.median(times[small])


def in_turn(root: Path, big: Path, small: Path, repeat: int, **how) -> tuple[float, float]:
    """Each model's runs one after the other (the plan memo holds one command line's plan:
    alternating would make the plan every time), after one that remembers its plan."""
    medians = []
    for model in (big, small):
        doit_list(root, model, **how)
        medians.append(statistics.median(doit_list(root, model, **how) for _ in range(repeat)))
    return medians[0], medians[1]


def report(label: str, big_s: float, small_s: float, size: int, repeat: int) -> None:
    print(f"{label}: {size / GB:.2f} GB model {big_s:.3f} s, tiny model {small_s:.3f} s, "
          f"ratio {big_s / small_s:.2f} (median of {repeat})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="the big model's size in GB")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    elements = int(args.gb * GB / 4)
    with tempfile.TemporaryDirectory(prefix="kiln-bench-model-files-") as tmp:
        check_room(Path(tmp), 4 * elements)
        root = copy_project(Path(tmp) / "proj")
        (root / "onnx").mkdir()
        big, small = root / "onnx" / "big.onnx", root / "onnx" / "small.onnx"
        started = time.perf_counter()
        write_onnx(big, elements)
        write_onnx(small, 16)
        print(f"wrote {big.stat().st_size / GB:.2f} GB in {time.perf_counter() - started:.1f} s")
        first = doit_list(root, big)   # parses it once, fills the memo
        doit_list(root, small)
        print(f"CPU: {cpu_name()}")
        print(f"first plan of the big model (parsed, remembered): {first:.3f} s")
        report("plan made every run, model facts remembered",
               *alternate(root, big, small, args.repeat), big.stat().st_size, args.repeat)
        report("plan made every run, KILN_MODEL_FACTS=0 (hooks asked)",
               *alternate(root, big, small, 1, facts=False), big.stat().st_size, 1)
        report("no-op view (plan memo on)",
               *in_turn(root, big, small, args.repeat, plan_memo=True), big.stat().st_size,
               args.repeat)


if __name__ == "__main__":
    main()
