"""What an executable says about itself (--version, the device list) is asked once and then
remembered across processes, keyed by its path, size and mtime: outcomes, never timings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.cache import probes

REPO = Path(__file__).resolve().parent.parent

FAKE = """#!/bin/sh
echo called >> "{calls}"
echo "fake-tool version {version}"
"""


def make_tool(tmp_path: Path, version: str = "1.0") -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "kiln-fake-tool"
    exe.write_text(FAKE.format(calls=tmp_path / "calls", version=version))
    exe.chmod(0o755)
    return exe


def version_in_new_process(tmp_path: Path) -> str:
    """probes.tool_version in a fresh interpreter, as each doit invocation is."""
    env = dict(os.environ, KILN_TOOL_CACHE=str(tmp_path / "probes.json"),
               PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    code = "from pipeline.cache import probes; print(probes.tool_version('kiln-fake-tool'))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True)
    return proc.stdout.strip()


def calls(tmp_path: Path) -> int:
    path = tmp_path / "calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_second_process_does_not_run_the_tool_again(tmp_path):
    make_tool(tmp_path)
    assert version_in_new_process(tmp_path) == "fake-tool version 1.0"
    assert version_in_new_process(tmp_path) == "fake-tool version 1.0"
    assert calls(tmp_path) == 1


def test_a_changed_or_touched_executable_is_asked_again(tmp_path):
    exe = make_tool(tmp_path)
    assert version_in_new_process(tmp_path) == "fake-tool version 1.0"
    make_tool(tmp_path, version="2.0.1")                 # a new build: another size
    assert version_in_new_process(tmp_path) == "fake-tool version 2.0.1"
    assert calls(tmp_path) == 2
    st = exe.stat()
    os.utime(exe, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))   # same size, new mtime
    assert version_in_new_process(tmp_path) == "fake-tool version 2.0.1"
    assert calls(tmp_path) == 3
    assert version_in_new_process(tmp_path) == "fake-tool version 2.0.1"
    assert calls(tmp_path) == 3
    # an older build's answer is dropped, not kept beside the new one
    assert len(json.loads((tmp_path / "probes.json").read_text())) == 1


def test_a_damaged_cache_file_is_ignored_and_rewritten(tmp_path):
    make_tool(tmp_path)
    (tmp_path / "probes.json").write_bytes(b'{"truncated": [')
    assert version_in_new_process(tmp_path) == "fake-tool version 1.0"
    assert calls(tmp_path) == 1
    assert len(json.loads((tmp_path / "probes.json").read_text())) == 1
    (tmp_path / "probes.json").write_text('["not", "a", "mapping"]')
    assert version_in_new_process(tmp_path) == "fake-tool version 1.0"
    assert calls(tmp_path) == 2
    assert version_in_new_process(tmp_path) == "fake-tool version 1.0"
    assert calls(tmp_path) == 2


def test_a_failed_answer_is_never_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv(probes.PROBE_CACHE_ENV, str(tmp_path / "probes.json"))
    exe = make_tool(tmp_path)
    asked = []
    assert probes.probe(str(exe), ("--x",), lambda: asked.append(1)) is None
    assert probes.probe(str(exe), ("--x",), lambda: asked.append(1)) is None
    assert len(asked) == 2


def test_the_device_list_is_asked_again_when_the_machine_changes(tmp_path, monkeypatch):
    monkeypatch.setenv(probes.PROBE_CACHE_ENV, str(tmp_path / "probes.json"))
    exe = make_tool(tmp_path)
    asked = []

    def ask():
        asked.append(1)
        return ["local-task://"]

    place = tmp_path / "icd.d"
    place.mkdir()
    watch = probes.Watch(places=(str(place),), env=("KILN_TEST_DEVICES",))
    monkeypatch.setenv("KILN_TEST_DEVICES", "a")
    assert probes.probe(str(exe), ("--list_devices",), ask, watch) == ["local-task://"]
    assert probes.probe(str(exe), ("--list_devices",), ask, watch) == ["local-task://"]
    assert len(asked) == 1
    monkeypatch.setenv("KILN_TEST_DEVICES", "b")           # the selecting environment
    assert probes.probe(str(exe), ("--list_devices",), ask, watch) == ["local-task://"]
    assert len(asked) == 2
    (place / "lvp_icd.json").write_text("{}")               # a driver manifest appears
    os.utime(place, ns=(1, place.stat().st_mtime_ns + 1_000_000_000))
    assert probes.probe(str(exe), ("--list_devices",), ask, watch) == ["local-task://"]
    assert len(asked) == 3


def test_the_cached_version_is_the_tools_own_text(tmp_path, monkeypatch):
    """The keys do not change: the remembered text is what --version prints."""
    monkeypatch.setenv(probes.PROBE_CACHE_ENV, str(tmp_path / "probes.json"))
    probes.tool_version.cache_clear()
    try:
        exe = probes.find_executable("iree-compile")
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
        direct = " ".join((out.stdout + out.stderr).split())
        assert probes.tool_version("iree-compile") == direct
        probes.tool_version.cache_clear()
        assert probes.tool_version("iree-compile") == direct      # now from the cache file
        assert direct in json.loads((tmp_path / "probes.json").read_text()).values()
    finally:
        probes.tool_version.cache_clear()


def test_tool_versions():
    assert probes.tool_version("iree-compile").startswith("IREE")      # the full version line
    assert "compiler version" in probes.tool_version("iree-compile")
    assert probes.tool_version("iree-base-runtime")[0].isdigit()       # a distribution's version
    assert probes.tool_version("no-such-tool-kiln") == "not installed"


# the device list asked ahead (as a plan does: stages.resolve_target), then by a caller that
# needs it while the asking may still be under way: one asking, the runtime's own answer
DEVICES_AHEAD = """from pipeline.cache import probes
from stages import iree_tools
iree_tools.ask_devices_ahead()
iree_tools.ask_devices_ahead()
print(" ".join(iree_tools.devices()))
print(len(probes.PROBED))"""


def test_the_devices_asked_ahead_are_the_runtimes_own_asked_once():
    from stages.iree_tools import tool
    repo = Path(__file__).resolve().parent.parent
    said = subprocess.run([sys.executable, "-c", DEVICES_AHEAD], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.splitlines()
    listed = subprocess.run([tool("iree-run-module"), "--list_devices"], capture_output=True,
                            text=True, check=True).stdout
    assert said[0].split() == [line.strip() for line in listed.splitlines() if "://" in line]
    assert said[1] == "1"
