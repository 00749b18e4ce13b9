"""ResNet-18, the issue's headline commands, and a SIGKILL in the middle of a real compile.

One test on purpose: capturing and importing ResNet-18 costs half a minute on 2 cores."""
import json
import os
import signal
import subprocess
import sys
import time

from conftest import needs_torch
from pipeline.keys import digest_file

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


def test_resnet_killed_mid_compile_resumes_then_compiles_for_vulkan_and_validates_on_cpu(project):
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen([sys.executable, "-m", "doit", "compile", "model=resnet", "target=cpu"],
                            cwd=project.root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    emitted = project.root / "build" / "resnet" / "emit" / "model.mlirbc"
    deadline = time.time() + 600
    while not emitted.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert emitted.exists(), "the run ended before emit"
    time.sleep(1.5)  # lower (iree-compile for llvm-cpu, several seconds) is now running
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
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
    assert (project.root / "build" / "resnet" / "vulkan" / "codegen" / "module.vmfb").stat().st_size > 1_000_000

    project.doit("validate", "model=resnet", "target=cpu")
    validate = next(t for t in project.record() if t["task"] == "validate:resnet@cpu")
    assert validate["status"] == "ran"
    assert validate["result"]["passed"], validate["result"]
    assert validate["result"]["max_abs_error"] < 1e-4
