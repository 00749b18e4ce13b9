"""The syntax of task names (pipeline/names.py): what is built parses back to what built it."""
from pipeline import names


def test_task_names():
    assert names.task_name("capture", "mlp") == "capture:mlp"
    assert names.task_name("validate", "mlp", "cpu~im2col") == "validate:mlp@cpu~im2col"
    assert names.task_subname("validate:mlp@cpu~im2col") == "mlp@cpu~im2col"


def test_variants_fold_into_their_target():
    assert names.variant_target("cpu", "default") == "cpu"      # the default keeps the name
    assert names.variant_target("cpu", "im2col") == "cpu~im2col"
    for target in ("cpu", "cpu~im2col"):
        assert names.base_target(target) == "cpu"
    assert names.variant_of("cpu") == "default" and names.variant_of("cpu~im2col") == "im2col"


def test_upstream_names_parse_back():
    for stage, target in (("lower", None), ("validate", "cpu"), ("validate", "cpu~im2col")):
        assert names.parse_upstream(names.upstream_name(stage, target)) == (stage, target)


def test_file_stems_do_not_clash():
    stems = {names.file_stem(t) for t in ("lower:mlp@cpu", "lower:mlp.cpu", "capture:a/b")}
    assert stems == {"lower.mlp@cpu", "lower.mlp.cpu", "capture.a_b"}


def test_a_release_is_part_of_the_target_and_parses_back():
    target = names.variant_target(names.release_target("cpu", "3.12.0"), "im2col")
    assert target == "cpu+3.12.0~im2col"
    assert names.base_target(target) == "cpu+3.12.0"      # a row per target and release
    assert names.release_of(target) == "3.12.0" and names.release_of("cpu~im2col") is None
    assert names.without_release(target) == "cpu~im2col"
    assert names.without_release("cpu+3.13.0") == "cpu" == names.without_release("cpu")
