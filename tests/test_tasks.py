import pytest

from pipeline.stage import ConfigError
from pipeline.plan.options import parse_shapes


def test_parse_shapes():
    assert parse_shapes("x:1x3x224x224;y:4") == {"x": [1, 3, 224, 224], "y": [4]}
    assert parse_shapes("serving_default_x:0:2x16") == {"serving_default_x:0": [2, 16]}
    assert parse_shapes(None) == {}


def test_bad_shapes_say_what_is_expected():
    with pytest.raises(ConfigError, match="expected 'input:1x3x224x224"):
        parse_shapes("x:1xfoo")
