"""The command line's key=value options (pipeline/plan/options.py): parsed once, typed, and
every bad value named with what would be valid."""
import pytest

from pipeline.plan.options import Options, parse_executor, parse_shapes, parse_shard
from pipeline.plan.variables import read_variables
from pipeline.stage import ConfigError


def test_parse_shapes():
    assert parse_shapes("x:1x3x224x224;y:4") == {"x": [1, 3, 224, 224], "y": [4]}
    assert parse_shapes("serving_default_x:0:2x16") == {"serving_default_x:0": [2, 16]}
    assert parse_shapes(None) == {}


def test_bad_shapes_say_what_is_expected():
    with pytest.raises(ConfigError, match="expected 'input:1x3x224x224"):
        parse_shapes("x:1xfoo")


def test_bad_shard_names_the_value():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "x", "1/0", "-1/2"):
        with pytest.raises(ConfigError, match=f"shard={bad}: expected I/N"):
            parse_shard(bad)


def test_options_are_typed_once():
    given = {"model": "mlp, resnet", "target": "cpu", "variants": "default", "shard": "2/4",
             "shapes": "x:1x4", "executor": "local:2", "days": "7", "retry": "failed"}
    options = Options.parse(given)
    assert options.models == ("mlp", "resnet") and options.targets == ("cpu",)
    assert options.variants == ("default",) and options.shard == (2, 4)
    assert options.shapes == {"x": [1, 4]} and options.executor == 2 and options.days == 7.0
    assert options.matrix == "default" and options.config is None and options.retry_failed
    assert options.variables == given          # as given: what the plan memo compares
    # a worker is handed the same selection, never the executor (it would recurse)
    assert options.for_worker() == {k: v for k, v in given.items() if k not in ("executor", "days")}


def test_absent_options_take_their_defaults():
    options = Options.parse({})
    assert (options.models, options.targets, options.variants, options.shard) == (None,) * 4
    assert options.executor is None and options.days == 30.0 and not options.retry_failed


@pytest.mark.parametrize("name, value, expected", [
    ("executor", "local:0", "executor=local:0: expected local:N"),
    ("executor", "http://x", "executor=http://x: expected local:N"),
    ("days", "soon", "days=soon: expected a number of days"),
    ("shard", "3/2", "shard=3/2: expected I/N"),
    ("retry", "all", "retry=all: expected retry=failed"),
    ("timing", "sometimes", "timing=sometimes: expected on or off"),
    ("strict", "very", "strict=very: expected on or off"),
])
def test_a_bad_option_names_itself_and_what_is_valid(name, value, expected):
    with pytest.raises(ConfigError, match=expected):
        Options.parse({name: value})


def test_executor_addresses():
    assert parse_executor(None) is None and parse_executor("") is None
    assert parse_executor("local:3") == 3
    assert parse_executor("tcp://127.0.0.1:8786") == "tcp://127.0.0.1:8786"


def test_only_known_options_are_read():
    given = {"model": "mlp", "unknown": "x", "target": None}
    assert read_variables(given.get) == {"model": "mlp"}


def test_timing_and_strict_are_switches():
    options = Options.parse({"timing": "off", "strict": "1", "xfail": "known.yaml"})
    assert options.timing is False and options.strict is True and options.xfail == "known.yaml"
    assert Options.parse({"timing": "ON"}).timing is True
    absent = Options.parse({})
    assert absent.timing is None and absent.strict is False and absent.xfail is None
    # the expected failures are the reports' business: a worker never reads them
    assert "xfail" not in options.for_worker() and options.for_worker()["timing"] == "off"
