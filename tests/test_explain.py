"""`doit explain` against what the next real run does (the torch MLP on cpu, real doit, real
iree-compile): after each change, the tasks explain says run are exactly the tasks the run
then records as "ran", those it says are restored come back "cached", and explain itself
writes nothing to build/, the cache or .doit.db."""
import shutil

import pytest
from conftest import REPO, needs_torch

pytestmark = needs_torch
ARGS = ("model=mlp", "target=cpu", "variants=default")   # variants: tests/test_variants.py
STAGES = ["capture:mlp", "serialize:mlp", "import:mlp", "legalize:mlp", "emit:mlp",
          "lower:mlp@cpu", "codegen:mlp@cpu", "validate:mlp@cpu", "pick:mlp@cpu"]


def files_state(root) -> dict:
    """Every file kiln may write, by path: its stat and, for .doit.db, its bytes; and what the
    project's directory holds (a .doit.db moved aside, a file created)."""
    state = {"": sorted(p.name for p in root.iterdir())}
    for top in ("build", "cache"):
        for path in (root / top).rglob("*"):
            st = path.lstat()
            state[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    db = root / ".doit.db"
    state[".doit.db"] = db.read_bytes() if db.exists() else None
    return state


def explain(project, *args) -> tuple[dict[str, tuple[str, str]], str]:
    """task -> (action, why) for each task explain lists; and its output. Asserts that it
    wrote nothing."""
    return explained(project, *args, *ARGS)


def explained(project, *args) -> tuple[dict[str, tuple[str, str]], str]:
    """explain without this file's ARGS."""
    before = files_state(project.root)
    out = project.doit("explain", *args).stdout
    assert files_state(project.root) == before, "doit explain wrote to build/, cache/ or .doit.db"
    listed = {}
    for line in out.splitlines():
        action, _, rest = line.partition(" ")
        if action in ("run", "restore", "skip", "maybe", "fail"):
            task, _, why = rest.strip().partition("  ")
            listed[task] = (action, why.strip())
    return listed, out


def of(listed: dict, action: str) -> set[str]:
    return {task for task, (a, _) in listed.items() if a == action}


def run(project) -> dict[str, str]:
    project.doit(*ARGS)
    return project.statuses()


def with_status(statuses: dict, status: str) -> set[str]:
    return {task for task, s in statuses.items() if s == status}


@pytest.fixture
def built(project):
    # the command is declared in pyproject.toml ([tool.doit.plugins.command])
    shutil.copy2(REPO / "pyproject.toml", project.root / "pyproject.toml")
    listed, _ = explain(project)
    assert of(listed, "run") == set(STAGES)            # nothing built, nothing cached
    assert listed["lower:mlp@cpu"][1].startswith("no earlier build of this stage here")
    assert set(run(project).values()) == {"ran"}
    return project


def test_explain_agrees_with_the_next_run(built):
    project = built
    listed, out = explain(project)
    assert listed == {} and out.strip() == "nothing to do: every task is up to date"
    # same bytes, new mtimes (a checkout, a copy): still nothing, and no record refreshed
    for rel in ["mlp/emit/model.mlirbc", "mlp/cpu/codegen/module.vmfb"]:
        (project.root / "build" / rel).touch()
    assert explain(project)[0] == {}

    # one stage file edited: that stage runs; what reads its outputs only may
    with open(project.root / "stages" / "lower.py", "a") as f:
        f.write("\n# a comment changes the code fingerprint, not the output\n")
    listed, _ = explain(project)
    assert listed["lower:mlp@cpu"] == ("run", "changed code: stages/lower.py")
    assert of(listed, "maybe") == {"codegen:mlp@cpu", "validate:mlp@cpu", "pick:mlp@cpu",
                                   "bisect:mlp@cpu"}   # (bisect: if validate fails)
    assert "waits on lower:mlp@cpu" in listed["codegen:mlp@cpu"][1]
    statuses = run(project)
    assert with_status(statuses, "ran") == of(listed, "run")
    whys = {t["task"]: t.get("why") for t in project.record()}
    assert whys["lower:mlp@cpu"] == listed["lower:mlp@cpu"][1]   # the record's own words
    assert explain(project)[0] == {}

    # a target's flag (one that leaves the code as it was): lower and codegen run
    config = project.root / "targets.yaml"
    original = config.read_text()
    config.write_text(original.replace("    arch: host\n",
                                       "    arch: host\n    flags: [--mlir-disable-threading]\n", 1))
    listed, _ = explain(project)
    assert of(listed, "run") == {"lower:mlp@cpu", "codegen:mlp@cpu"}
    assert listed["lower:mlp@cpu"][1] == "changed params: flags"
    statuses = run(project)
    assert with_status(statuses, "ran") == of(listed, "run")
    assert with_status(statuses, "ran") <= of(listed, "run") | of(listed, "maybe")

    # the flag taken back: both keys are in the cache, so both are restored, nothing runs
    config.write_text(original)
    listed, _ = explain(project)
    assert of(listed, "run") == set()
    assert of(listed, "restore") == {"lower:mlp@cpu", "codegen:mlp@cpu"}
    statuses = run(project)
    assert with_status(statuses, "cached") == of(listed, "restore")
    assert with_status(statuses, "ran") == set()


def test_explain_predicts_restores(built):
    project = built
    # a damaged output is restored; the stage after it reads the same bytes again
    vmfb = project.root / "build" / "mlp" / "cpu" / "codegen" / "module.vmfb"
    data = bytearray(vmfb.read_bytes())
    data[100] ^= 1
    vmfb.write_bytes(bytes(data))
    listed, _ = explain(project)
    assert listed == {"codegen:mlp@cpu": (
        "restore", "key in the cache (output build/mlp/cpu/codegen/module.vmfb no longer "
                   "matches what kiln wrote)")}
    statuses = run(project)
    assert with_status(statuses, "cached") == {"codegen:mlp@cpu"}
    assert set(statuses.values()) == {"cached", "up-to-date"}

    # no .doit.db (a fresh clone with a restored cache): every stage comes from the cache
    (project.root / ".doit.db").unlink()
    listed, _ = explain(project)
    assert of(listed, "restore") == set(STAGES)
    assert not (project.root / ".doit.db").exists()
    assert set(run(project).values()) == {"cached"}

    # only what `doit compile` reaches
    (project.root / ".doit.db").unlink()
    listed, _ = explain(project, "compile")
    assert of(listed, "restore") == set(STAGES) - {"validate:mlp@cpu", "pick:mlp@cpu"}


def test_explain_sees_the_remote_cache(project, cache_server, tmp_path):
    """A clone with no cache/ and no build/, reading a remote that CI filled: explain says
    every stage is restored from the remote (without downloading a blob), and it is."""
    from conftest import Project, copy_project
    shutil.copy2(REPO / "pyproject.toml", project.root / "pyproject.toml")
    project.doit(*ARGS, env_extra=cache_server.env(mode="write"))
    clone = Project(copy_project(tmp_path / "clone"))
    shutil.copy2(REPO / "pyproject.toml", clone.root / "pyproject.toml")
    gets = cache_server.requests("GET")
    out = clone.doit("explain", *ARGS, env_extra=cache_server.env()).stdout
    assert not any((clone.root / p).exists() for p in ("build", "cache", ".doit.db"))
    listed = {line.split()[1]: line for line in out.splitlines() if line.startswith("restore")}
    assert set(listed) == set(STAGES), out
    assert all("key in the remote cache" in line for line in listed.values())
    # one GET per entry, none for a blob
    assert cache_server.requests("GET") - gets == len(STAGES)
    clone.doit(*ARGS, env_extra=cache_server.env())
    assert set(clone.statuses().values()) == {"cached"}


# --- a matrix with a variant that cannot compile and a target with no device here ----------

MATRIX = """targets:
  cpu:
    backend: llvm-cpu
    arch: host
    variants:
      broken: [--iree-no-such-flag]
  cuda:
    backend: cuda
    arch: sm_80
models:
  m1:
    framework: mlir
    file: mlir/m1.mlir
matrices:
  default:
    models: [m1]
    targets: [cpu, cuda]
    variants: [default, broken]
"""
# what each of explain's actions may end as in the next run's record
OUTCOMES = {"run": {"ran", "failed"}, "restore": {"cached"}, "skip": {"skipped"},
            "fail": {"failed", "failed (cached)"}, "up-to-date": {"up-to-date"}}
REMEMBERED = "failed with this same key before: its failure is remembered in the cache"
RETRIED = ("retry=failed: it failed with this same key before (its failure is remembered in "
           "the cache)")


def predicted(listed: dict, tasks) -> dict[str, str]:
    """task -> explain's action for it; a task explain does not list is up to date."""
    return {task: listed.get(task, ("up-to-date", ""))[0] for task in tasks}


def test_explain_predicts_each_stage_of_a_matrix_with_a_failing_variant_and_no_device(tmp_path):
    from conftest import Project
    from test_memo import mlir_project
    project = mlir_project(tmp_path / "proj", names=("m1",))
    project = Project(project.root, variants=None)   # the variants the matrix asks for
    project.write_config(MATRIX)
    shutil.copy2(REPO / "pyproject.toml", project.root / "pyproject.toml")
    # before the first run: a stage with no device here is a skip, not a run
    listed, out = explained(project)
    assert listed["validate:m1@cuda"] == ("skip", "skipped: no cuda device"), out
    assert listed["pick:m1@cuda"] == ("skip", "skipped: no cuda device")
    assert listed["lower:m1@cpu~broken"][0] == "run"
    project.doit(check=False)
    statuses = project.statuses()
    assert statuses["lower:m1@cpu~broken"] == "failed" and statuses["pick:m1@cpu"] == "ran"
    assert statuses["validate:m1@cuda"] == "skipped" and statuses["pick:m1@cuda"] == "skipped"
    for task, action in predicted(listed, statuses).items():
        if action != "maybe":   # (what waits on the failing variant, before it ever ran)
            assert statuses[task] in OUTCOMES[action], (task, action, statuses[task], out)

    # the next runs: every stage predicted, none a "maybe". iree-compile's rejection of the
    # broken variant is remembered: reported "failed (cached)" without running iree-compile,
    # until retry=failed runs it (and nothing else) again
    for retry in ((), ("retry=failed",)):
        listed, out = explained(project, *retry)
        project.doit(*retry, check=False)
        statuses = project.statuses()
        assert not of(listed, "maybe") and set(listed) <= set(statuses), out
        for task, action in predicted(listed, statuses).items():
            assert statuses[task] in OUTCOMES[action], (task, action, statuses[task], out)
        log = (project.root / "build" / "logs" / "lower.m1@cpu~broken.log").read_text()
        assert "Unknown command line argument '--iree-no-such-flag'" in log
        if retry:
            assert listed["lower:m1@cpu~broken"] == ("run", RETRIED)
            assert statuses["lower:m1@cpu~broken"] == "failed"
        else:
            assert listed["lower:m1@cpu~broken"] == (
                "fail", f"{REMEMBERED} (retry=failed runs it again)")
            assert statuses["lower:m1@cpu~broken"] == "failed (cached)"
            assert "status: failed (cached)\n" in log and f"failed (cached): {REMEMBERED}" in log
        assert of(listed, "skip") == {"codegen:m1@cpu~broken", "validate:m1@cpu~broken",
                                      "validate:m1@cuda", "pick:m1@cuda", "bisect:m1@cuda"}
        assert "pick:m1@cpu" not in listed and statuses["pick:m1@cpu"] == "up-to-date"
        assert with_status(statuses, "ran") == set()

    # a damaged .doit.db: explain leaves it where it is and reads it as empty, as the run
    # will (it moves it aside); every stage that can be is restored from the cache
    db = project.root / ".doit.db"
    db.write_bytes(b"not a database" * 100)
    listed, out = explained(project)
    assert of(listed, "restore") == set(statuses) - of(listed, "fail") - of(listed, "skip"), out
    assert of(listed, "fail") == {"lower:m1@cpu~broken"} and of(listed, "run") == set()
    project.doit(check=False)
    statuses = project.statuses()
    assert (project.root / ".doit.db.damaged").exists()
    for task, action in predicted(listed, statuses).items():
        assert statuses[task] in OUTCOMES[action], (task, action, statuses[task], out)

    # damage sqlite cannot see: a row doit cannot decode (the run decodes every row to know)
    import sqlite3
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE doit SET task_data = '{\"truncated' WHERE task_id = 'pick:m1@cpu'")
    conn.close()
    again, out = explained(project)
    assert again == listed, out
