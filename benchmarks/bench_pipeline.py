"""kiln's speed figures, measured in one run on a throw-away copy of the project.

    .venv/bin/python benchmarks/bench_pipeline.py [--matrix default] [--models a,b]

Prints:
  1. cold `doit compile` of the matrix, against running the very same iree-compile commands
     directly (replayed from the stage logs): kiln's overhead ratio on the compile stages;
  2. the no-op rebuild time of the matrix (`doit validate` with nothing changed);
  3. tasks executed after appending a comment to stages/legalize.py, against the minimum
     (one legalize per model);
  4. per-model front-end stage times (capture, serialize, import, legalize).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import copy_project  # noqa: E402

ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def doit(root: Path, *args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=root, env=ENV,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"doit {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def record(root: Path) -> list[dict]:
    return json.loads((root / "build" / "run.json").read_text())["tasks"]


def replay_compiles(root: Path, tasks: list[dict]) -> tuple[float, float]:
    """(kiln's seconds, direct seconds) for every stage that called iree-compile."""
    kiln = direct = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            log = (root / task["log"]).read_text()
            commands = [line[2:] for line in log.splitlines() if line.startswith("$ ")
                        and "iree-compile" in line]
            if not commands:
                continue
            kiln += task["seconds"]
            for command in commands:
                argv_text, _, stdin_path = command.rpartition(" < ")
                argv = shlex.split(argv_text)
                argv[argv.index("-o") + 1] = str(Path(tmp) / "out")
                with open(shlex.split(stdin_path)[0], "rb") as stdin:
                    started = time.perf_counter()
                    subprocess.run(argv, stdin=stdin, check=True, capture_output=True)
                    direct += time.perf_counter() - started
    return kiln, direct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--matrix", default="default")
    parser.add_argument("--models", help="comma list overriding the matrix's models")
    args = parser.parse_args()
    select = [f"matrix={args.matrix}"] + ([f"model={args.models}"] if args.models else [])

    with tempfile.TemporaryDirectory() as tmp:
        root = copy_project(Path(tmp) / "proj")
        cold = doit(root, "compile", *select)
        tasks = record(root)
        kiln_compile, direct_compile = replay_compiles(root, tasks)
        front = [t for t in tasks if t["stage"] in ("capture", "serialize", "import", "legalize")]

        doit(root, "validate", *select)          # finish the matrix (validation)
        noop = doit(root, "validate", *select)
        noop_ran = sum(t["status"] in ("ran", "cached") for t in record(root))

        with open(root / "stages" / "legalize.py", "a") as f:
            f.write("\n# benchmark: a comment\n")
        doit(root, "validate", *select)
        after_edit = record(root)
        executed = sum(t["status"] in ("ran", "cached") for t in after_edit)
        minimum = len({t["model"] for t in after_edit if t["stage"] == "legalize"})

    print(tabulate([
        ["cold `doit compile` (wall, s)", f"{cold:.1f}"],
        ["  iree-compile stages: kiln (s)", f"{kiln_compile:.2f}"],
        ["  same commands run directly (s)", f"{direct_compile:.2f}"],
        ["  overhead ratio kiln / direct", f"{kiln_compile / direct_compile:.3f}"],
        ["no-op rebuild `doit validate` (wall, s)", f"{noop:.2f}"],
        ["  stages executed in the no-op", noop_ran],
        ["tasks executed after legalize.py edit", executed],
        ["  minimum (one legalize per model)", minimum],
    ], headers=["figure", "value"]))
    print()
    by_model: dict[str, dict] = {}
    for t in front:
        by_model.setdefault(t["model"], {})[t["stage"]] = t["seconds"]
    print(tabulate([[m, *(f"{s.get(k, 0):.2f}" for k in ("capture", "serialize", "import", "legalize"))]
                    for m, s in sorted(by_model.items())],
                   headers=["model", "capture s", "serialize s", "import s", "legalize s"]))


if __name__ == "__main__":
    main()
