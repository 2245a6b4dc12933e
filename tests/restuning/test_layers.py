import pytest

from restuning.errors import ConfigError
from restuning.layers import format_layers, parse_layers


@pytest.mark.parametrize(
    "spec, expected",
    [("all", tuple(range(1, 13))), (None, tuple(range(1, 13))), ("1-6", (1, 2, 3, 4, 5, 6)),
     ("1,4,7-9", (1, 4, 7, 8, 9)), ("3,1,3", (1, 3)), ([2, 5], (2, 5))],
)
def test_parse(spec, expected):
    assert parse_layers(spec, 12) == expected


@pytest.mark.parametrize("spec", ["0", "13", "1-13", "a", "5-2", "", [1.5]])
def test_bad_specs(spec):
    with pytest.raises(ConfigError):
        parse_layers(spec, 12)


def test_format():
    assert format_layers((1, 2, 3, 5, 7, 8)) == "1-3,5,7-8"
