"""Build the model zoo: every builder of every `*_models.py` module beside this file, each
into a folder of its own, `build/zoo/<name>/`, which kiln's suite discovery names <name>.

    .venv/bin/python benchmarks/zoo/build.py [--only a,b] [--jobs N] [--out build/zoo]

A module's MODELS maps a name to a builder: builder(folder) writes one model into folder as
a user would bring it (a file, with whatever lies beside it, or a SavedModel directory) and
returns its path. Each builder runs in a process of its own (frameworks keep global state,
and a big model's memory goes with its process), in a temporary folder under --out that is
renamed into place when whole, so a folder in --out is never half-written. There the model
is renamed `model.<suffix>` (a SavedModel directory `model/`): kiln names a case by its
folder when its file is model.* (the rest of the folder, e.g. ONNX external data, is kept).

A model is skipped ("cached") when its folder's `.stamp` holds the digest of its module's
source and its name: editing a builder's module builds its models again. It prints one line
per model, built, cached or failed with the error; a failure never stops the others, and
the exit status is 1 if any failed."""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
STAMP = ".stamp"          # hidden: kiln's folder scan skips it
BUILD_TIMEOUT_S = 3600


def modules() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*_models.py"))


def registry() -> dict[str, str]:
    """model name -> the module that builds it (every *_models.py imported; a name in two
    modules is an error naming both)."""
    sys.path.insert(0, str(HERE))
    owners: dict[str, str] = {}
    for module in modules():
        for name in importlib.import_module(module).MODELS:
            if name in owners:
                sys.exit(f"{name} is built by both {owners[name]}.py and {module}.py")
            owners[name] = module
    return owners


def stamp(module: str, name: str) -> str:
    source = (HERE / f"{module}.py").read_bytes()
    return hashlib.sha256(source + b"\0" + name.encode()).hexdigest()


def is_built(folder: Path, module: str, name: str) -> bool:
    try:
        return (folder / STAMP).read_text() == stamp(module, name)
    except OSError:
        return False


def build_in_child(module: str, name: str, folder: Path) -> None:
    """(In the child process.) Run the builder into folder; rename its model to model.*."""
    sys.path.insert(0, str(HERE))
    made = Path(importlib.import_module(module).MODELS[name](folder)).resolve()
    if made.parent != folder.resolve():
        raise SystemExit(f"{module}.MODELS[{name!r}] returned {made}, which is not directly "
                         f"in the folder it was given ({folder})")
    target = folder / ("model" if made.is_dir() else f"model{''.join(made.suffixes[-1:])}")
    if made != target.resolve():
        made.rename(target)


def build_one(module: str, name: str, out: Path) -> tuple[str, str]:
    """(outcome, detail): 'cached', 'built' with its seconds, or 'failed' with the error."""
    final = out / name
    if is_built(final, module, name):
        return "cached", ""
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))   # hidden from kiln's scan
    started = time.perf_counter()
    try:
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", module, name, str(work)],
                                  capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                                  cwd=REPO, check=False)
        except subprocess.TimeoutExpired:
            return "failed", f"did not finish in {BUILD_TIMEOUT_S} s"
        if proc.returncode:
            lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
            return "failed", f"exit {proc.returncode}: " + " | ".join(lines[-3:])[-600:]
        (work / STAMP).write_text(stamp(module, name))
        _replace(work, final)
        return "built", f"{time.perf_counter() - started:.1f} s"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _replace(new: Path, final: Path) -> None:
    """new takes final's place; the old folder is moved aside first and then removed."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old.{time.time_ns()}")
        final.rename(old)
    new.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="these models, comma-separated")
    parser.add_argument("--jobs", type=int, default=1, help="builders run at once")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "zoo")
    parser.add_argument("--list", action="store_true", help="print the models' names and stop")
    parser.add_argument("--child", nargs=3, metavar=("MODULE", "NAME", "FOLDER"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        build_in_child(args.child[0], args.child[1], Path(args.child[2]))
        return 0
    owners = registry()
    if args.list:
        print("\n".join(owners))
        return 0
    names = args.only.split(",") if args.only else list(owners)
    unknown = [n for n in names if n not in owners]
    if unknown:
        sys.exit(f"--only: no builder named {', '.join(unknown)} (known: {', '.join(owners)})")
    args.out.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, tuple[str, str]] = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {pool.submit(build_one, owners[n], n, args.out): n for n in names}
        for future in concurrent.futures.as_completed(futures):
            name = futures[future]
            outcomes[name] = future.result()
            outcome, detail = outcomes[name]
            print(f"{outcome:7} {name}" + (f"  {detail}" if detail else ""), flush=True)
    counts = {k: sum(o == k for o, _ in outcomes.values()) for k in ("built", "cached", "failed")}
    print(json.dumps(counts))
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
