"""What a second IREE release costs: provisioning it once, checking it on each later run, and
building models with it beside kiln's own release.

    .venv/bin/python benchmarks/bench_upgrade.py [--release 3.12.0] [--models mlp,onnx_cnn]

1. Provisions the release into a fresh directory (pip download and install, or from pip's
   wheel cache where an earlier run filled it: the line says which), then finds it again in a
   fresh process (the manifest check only: what every later plan pays).
2. Validates the models on cpu with both releases (`iree=<release>,<kiln's>`) in a copy of
   this project with an empty cache, and prints the seconds of each release's own stages
   (relegalize, lower, codegen, validate, ...) beside the models' shared ones (capture to emit),
   summed from the run record; then the same command again (a no-op) and its wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from bench_engine import cpu_name  # noqa: E402
from conftest import copy_project  # noqa: E402

from pipeline.names import release_of  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
ENV["KILN_REPORT_CHARTS"] = "off"


def provision_twice(release: str, root: Path) -> tuple[float, float, bool]:
    """(seconds to provision into root, seconds to find it again in a new process, whether
    pip downloaded anything)."""
    code = ("import sys, time; from pipeline.cache import toolchain; from stages import "
            "toolchains; toolchain.use_root(__import__('pathlib').Path(sys.argv[1])); "
            "t = time.perf_counter(); toolchains.site(sys.argv[2]); "
            "print(time.perf_counter() - t)")
    runs = [subprocess.run([sys.executable, "-c", code, str(root), release], cwd=REPO, env=ENV,
                           capture_output=True, text=True, check=True) for _ in range(2)]
    downloaded = "Downloading" in runs[0].stderr
    return float(runs[0].stdout.split()[-1]), float(runs[1].stdout.split()[-1]), downloaded


def build_both(release: str, models: str, project: Path) -> tuple[dict, float, float]:
    """(seconds by side: each release's own stages and the shared ones, the cold run's wall
    seconds, the no-op's)."""
    from stages.toolchains import installed
    args = [sys.executable, "-m", "doit", "validate", f"model={models}", "target=cpu",
            "variants=default", "timing=off", f"iree={release},{installed()}"]
    walls = []
    for _ in range(2):
        started = time.perf_counter()
        subprocess.run(args, cwd=project, env=ENV, capture_output=True, text=True, check=False)
        walls.append(time.perf_counter() - started)
        if len(walls) == 1:
            tasks = json.loads((project / "build" / "run.json").read_text())["tasks"]
    sides: dict[str, float] = {}
    for task in tasks:
        side = release_of(task["target"]) if task["target"] else "shared (capture to emit)"
        sides[side] = sides.get(side, 0.0) + (task.get("seconds") or 0.0)
    return sides, walls[0], walls[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", default="3.12.0")
    parser.add_argument("--models", default="mlp,onnx_cnn,tflite_cnn")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_name()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="bench-upgrade-") as tmp:
        first, again, downloaded = provision_twice(args.release, Path(tmp) / "toolchains")
        print(f"provision IREE {args.release}: {first:.1f} s "
              f"({'downloaded' if downloaded else 'from pip wheel cache'}); "
              f"found again in a new process: {again * 1000:.1f} ms")
        project = copy_project(Path(tmp) / "proj")
        sides, cold, noop = build_both(args.release, args.models, project)
        print(f"validate {args.models} on cpu with both releases: cold {cold:.1f} s wall, "
              f"no-op {noop:.2f} s")
        for side, seconds in sorted(sides.items()):
            print(f"  {side}: {seconds:.1f} s in stages")


if __name__ == "__main__":
    main()
