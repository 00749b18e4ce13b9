"""A toy kiln project: kiln's own engine (this checkout's pipeline/, its Session, plan, runner,
store and reporter) driving two pure-Python stages over a folder of text "models", so that a
test or a measurement of the engine needs no framework and no IREE.

    prepare:<case>         reads the case's .txt file, writes prepared.txt; a file holding
                           FAIL fails it with a StageError (a verdict: remembered under its
                           key), one holding FLAKY with a transient one (never remembered)
    check:<case>@<target>  reads prepared.txt, writes checked.txt (the case's verdict)

Shared by tests/test_uptodate.py and benchmarks/bench_suite.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

DODO = '''"""kiln's engine over toy_stages.py (tests/toy_kiln.py wrote this)."""
import sys
from pathlib import Path

sys.path.insert(0, {repo!r})
from doit import get_var

from pipeline.driver.session import Session

HERE = Path(__file__).parent


def make_plan(variables):
    import toy_stages
    from pipeline.plan.options import Options
    from pipeline.plan.tasks import make_plan
    return make_plan(Options.parse(variables), toy_stages.pipeline(), toy_stages.detect,
                     lambda target: target, [HERE / "models"])


SESSION = Session(get_var, make_plan, [HERE / "dodo.py", Path({repo!r}) / "pipeline",
                                       HERE / "toy_stages.py"])
DOIT_CONFIG = SESSION.doit_config()


def task_stages():
    yield from SESSION.tasks()
'''

STAGES = '''"""Two pure-Python stages (tests/toy_kiln.py)."""
from pathlib import Path

from pipeline.stage import Stage, StageError


class Prepare(Stage):
    name = "prepare"

    def outputs(self, model):
        return ("prepared.txt",)

    def run(self, ctx):
        text = Path(ctx.model.sources["model"]).read_text()
        if "FLAKY" in text:
            raise StageError("prepare: the machine went away", transient="a lost device")
        if "FAIL" in text:
            raise StageError("prepare: this case holds FAIL", command="prepare " + ctx.model.name)
        (ctx.out / "prepared.txt").write_text(text.upper())
        return None


class Check(Stage):
    name = "check"
    per_target = True
    inputs = ("prepare",)
    default = True
    role = "verdict"

    def outputs(self, model):
        return ("checked.txt",)

    def key_params(self, model, target):
        return {{"flags": list(target.flags)}}

    def run(self, ctx):
        text = (ctx.inputs["prepare"] / "prepared.txt").read_text()
        (ctx.out / "checked.txt").write_text(text[::-1])
        return {{"passed": True}}


def pipeline():
    return [Prepare(), Check()]


def detect(path):
    return "toy" if Path(path).suffix == ".txt" else None
'''

# `doit explain` is a command plugin: doit imports it before dodo.py (PYTHONPATH: environment)
PYPROJECT = """[tool.doit.plugins.command]
explain = "pipeline.driver.cmd_explain:Explain"
"""

CONFIG = """targets:
  cpu:
    backend: toy
matrices:
  default:
    suite: cases
    targets: [cpu]
"""


def make_project(root: Path, cases: int, failing: int = 0) -> Path:
    """A toy project at root with `cases` cases under cases/, the first `failing` of which
    fail at prepare (a verdict, remembered)."""
    (root / "cases").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "dodo.py").write_text(DODO.format(repo=str(REPO)))
    (root / "toy_stages.py").write_text(STAGES.format())
    (root / "targets.yaml").write_text(CONFIG)
    (root / "pyproject.toml").write_text(PYPROJECT)
    for i in range(cases):
        text = f"FAIL {i}" if i < failing else f"case {i}"
        (root / "cases" / f"c{i:04d}.txt").write_text(text)
    return root


def environment(**extra: str) -> dict:
    """The environment a toy run has: none of the user's KILN_* settings, charts off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    return {**env, "KILN_REPORT_CHARTS": "off", "KILN_PROGRESS": "0", "PYTHONPATH": str(REPO),
            **extra}


def doit(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m doit ARGS` in the toy project (exit codes are the caller's to judge)."""
    return subprocess.run([sys.executable, "-m", "doit", *args], cwd=root, check=False,
                          env={**environment(), **(env or {})}, capture_output=True, text=True,
                          timeout=300)
