"""Target resolution: flags per backend, 'host' made concrete, bad names caught before
iree-compile sees them (an unknown vulkan target crashes it)."""
import pytest

from pipeline.stage import ConfigError, Target
from stages.targets import compile_flags, host_cpu, resolve


def target(backend, arch=None, flags=()):
    return Target("t", backend, arch, None, tuple(flags), 1e-4, 1e-4, "targets.yaml:7")


def test_host_cpu_is_resolved_to_a_concrete_name():
    cpu = resolve(target("llvm-cpu", "host"))
    assert cpu.arch == host_cpu() and cpu.arch != "host"
    assert f"--iree-llvmcpu-target-cpu={cpu.arch}" in compile_flags(cpu)
    assert cpu.driver == "local-task"


def test_defaults_and_extra_flags():
    vulkan = resolve(target("vulkan-spirv", flags=["--iree-opt-level=O2"]))
    assert (vulkan.arch, vulkan.driver) == ("llvmpipe", "vulkan")
    assert compile_flags(vulkan) == ["--iree-hal-target-device=vulkan",
                                     "--iree-vulkan-target=llvmpipe", "--iree-opt-level=O2"]
    assert resolve(target("rocm")).driver == "hip"


@pytest.mark.parametrize("bad, words", [
    (target("metal"), ["targets.yaml:7", "targets.t.backend", "unknown backend 'metal'", "vulkan-spirv"]),
    (target("vulkan-spirv", "rdna9"), ["targets.t.arch", "'rdna9'", "llvmpipe", "rdna3"]),
    (target("cuda", "sm_90"), ["targets.t.arch", "'sm_90'", "sm_89"]),
    (target("vmvx", "x"), ["backend vmvx takes no arch"]),
    # an input-phase flag would do nothing: kiln's lower compiles from after that phase
    (target("llvm-cpu", flags=["--iree-input-demote-f32-to-f16"]),
     ["targets.yaml:7", "targets.t.flags", "--iree-input-demote-f32-to-f16", "input phase",
      "no effect", "--iree-global-opt-demote-contraction-inputs-type=f16|bf16"]),
    (Target("t", "llvm-cpu", None, None, (), 1e-4, 1e-4, "targets.yaml:7",
            variants=(("half", ("--iree-input-demote-f32-to-f16",)),)),
     ["targets.t.variants.half", "input phase"]),
])
def test_bad_targets_are_named(bad, words):
    with pytest.raises(ConfigError) as err:
        resolve(bad)
    for word in words:
        assert word in str(err.value)


def test_rocm_arches_are_checked_before_iree_compile_sees_them():
    with pytest.raises(ConfigError) as err:
        resolve(target("rocm", "gfx1030"))   # IREE 3.13: "Unknown ROCM target"
    assert "'gfx1030'" in str(err.value) and "gfx942" in str(err.value)


NEW_BACKEND = '''
# a second CPU flavour, added as a user would: this entry and a targets.yaml target
BACKENDS["cpu-sync"] = Backend(
    "cpu-sync", ("--iree-hal-target-device=local",
                 "--iree-hal-local-target-device-backends=llvm-cpu"), "local-sync",
    arch_flag="--iree-llvmcpu-target-cpu", default_arch="generic", reference=True)
'''


def add_backend(root) -> None:
    """The backend's entry in stages/backends.py, and a target `sync` naming it."""
    with open(root / "stages" / "backends.py", "a") as f:
        f.write(NEW_BACKEND)
    config = (root / "targets.yaml").read_text()
    (root / "targets.yaml").write_text(config.replace(
        "targets:\n", "targets:\n  sync:\n    backend: cpu-sync\n    atol: 1.0e-4\n"
                      "    rtol: 1.0e-3\n", 1))


def test_a_new_backend_is_one_entry(project, tmp_path):
    """A backend added to stages/backends.py alone (and a target naming it) compiles, runs on
    its driver and validates, beside the built-in llvm-cpu: no other file of kiln changes."""
    import json

    from test_mlir_files import matmul_mlir
    add_backend(project.root)
    model = tmp_path / "matmul.mlir"
    model.write_text(matmul_mlir())
    project.doit("validate", f"model={model}", "target=cpu,sync")
    rows = {(t["stage"], t["target"]): t for t in project.record()}
    assert rows[("validate", "sync")]["status"] == "ran"
    assert rows[("validate", "sync")]["result"]["passed"]
    entry, = (project.root / "build" / ".kiln" / "tasks").glob("lower.*@sync.json")
    lowered = json.loads(entry.read_text())
    assert "--iree-llvmcpu-target-cpu=generic" in lowered["fingerprint"]["params"]["flags"]
