"""ResNet-18, the issue's headline commands, and a SIGKILL in the middle of a real compile.

Capturing and importing ResNet-18 costs half a minute on 2 cores: done once for the session
(conftest's resnet_front), whose cache each test starts from, so its first run restores the
front end and compiles from lower on."""
import json
import os
import signal
import subprocess
import sys
import time

from conftest import needs_torch, seed_cache

from pipeline.cache.digest import digest_file

pytestmark = needs_torch


def assert_cache_whole(cache):
    """Every action-cache entry names blobs that exist and hash to their names."""
    entries = list((cache / "ac").rglob("*.json"))
    assert entries
    for entry_file in entries:
        entry = json.loads(entry_file.read_text())
        for digest in entry["outputs"].values():
            blob = cache / "cas" / digest[:2] / digest
            assert blob.is_file() and digest_file(blob) == digest, entry_file


def start_and_stop_during_codegen(project, target, sig, process_group):
    """Start `doit compile model=resnet`, wait until lower is done and codegen (iree-compile,
    several seconds for ResNet) is running, then send sig."""
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen([sys.executable, "-m", "doit", "compile", "model=resnet", f"target={target}"],
                            cwd=project.root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lowered = project.root / "build" / "resnet" / target / "lower" / "lowered.mlir"
    deadline = time.time() + 600
    while not lowered.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert lowered.exists(), "the run ended before lower"
    time.sleep(0.5)
    os.killpg(proc.pid, sig) if process_group else os.kill(proc.pid, sig)
    proc.wait(timeout=120)


def test_resnet_killed_mid_compile_resumes_then_compiles_for_vulkan_and_validates_on_cpu(
        project, resnet_front):
    seed_cache(project, resnet_front)
    start_and_stop_during_codegen(project, "cpu", signal.SIGKILL, process_group=True)
    assert not (project.root / "build" / "resnet" / "cpu" / "codegen" / "module.vmfb").exists()
    assert_cache_whole(project.root / "cache")

    project.doit("compile", "model=resnet", "target=cpu")
    statuses = project.statuses()
    assert statuses["codegen:resnet@cpu"] == "ran"
    assert_cache_whole(project.root / "cache")

    project.doit("compile", "model=resnet", "target=vulkan")
    statuses = project.statuses()
    assert statuses["lower:resnet@vulkan"] == "ran" and statuses["codegen:resnet@vulkan"] == "ran"
    assert statuses["emit:resnet"] == "up-to-date"
    # the weights live in one archive beside the modules, not inside each of them
    build = project.root / "build" / "resnet"
    assert (build / "emit" / "model.irpa").stat().st_size > 40_000_000
    for target in ("cpu", "vulkan"):
        assert (build / target / "codegen" / "module.vmfb").stat().st_size < 1_000_000

    project.doit("validate", "model=resnet", "target=cpu")
    validate = next(t for t in project.record() if t["task"] == "validate:resnet@cpu")
    assert validate["status"] == "ran"
    assert validate["result"]["passed"], validate["result"]
    assert validate["result"]["max_abs_error"] < 1e-4


def test_sigterm_keeps_the_work_done_so_far(project, resnet_front):
    """doit saves its database only at the end of a run; kiln's SIGTERM handler turns the
    signal into a KeyboardInterrupt so the finished stages stay up to date in .doit.db."""
    seed_cache(project, resnet_front)
    start_and_stop_during_codegen(project, "cpu", signal.SIGTERM, process_group=False)
    assert not (project.root / "build" / "resnet" / "cpu" / "codegen" / "module.vmfb").exists()
    assert not any(p.suffix == ".tmp" for p in (project.root / "cache").rglob("*"))
    project.doit("compile", "model=resnet", "target=cpu")
    statuses = project.statuses()
    assert {statuses[f"{s}:resnet"] for s in ("capture", "serialize", "import", "legalize", "emit")} \
        | {statuses["lower:resnet@cpu"]} == {"up-to-date"}
    assert statuses["codegen:resnet@cpu"] == "ran"


def test_resnet_on_bf16_matmuls_is_bisected_to_its_classifier(project, resnet_front):
    """The issue's vehicle at ResNet size: cpu-bf16 (targets.yaml) demotes matmul inputs to
    bf16; validate fails and bisect names the one matmul, after the convolutions agree.
    (Its cost is benchmarks/bench_bisect.py's.)"""
    seed_cache(project, resnet_front)
    proc = project.doit("validate", "model=resnet", "target=cpu-bf16", check=False)
    assert proc.returncode != 0
    record = {t["task"]: t for t in project.record()}
    assert record["validate:resnet@cpu-bf16"]["status"] == "failed"
    found = record["bisect:resnet@cpu-bf16"]["result"]
    first = found["first_bad_dispatch"]
    assert first["symbol"].endswith("_matmul_1x1000x512_bf16xbf16xf32"), found["summary"]
    assert first["agreeing_before"] > 50 and first["reference_target"] == "cpu"
    assert found["unpaired"]["failing_count"] == 0 and not found["after"]
