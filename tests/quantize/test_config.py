import json

import pytest

from quantize import QuantConfig
from quantize.errors import ConfigError, UserError


def test_defaults_are_gptaq_w4_g128():
    cfg = QuantConfig()
    assert (cfg.method, cfg.w_bits, cfg.group_size, cfg.sym, cfg.alpha, cfg.damp) == ("gptaq", 4, 128, True, 0.25, 0.01)
    assert cfg.a_bits == 16 and not cfg.quantizes_activations


@pytest.mark.parametrize(
    "changes",
    [{}, {"method": "gptq", "act_order": True}, {"method": "rtn", "w_bits": 8, "group_size": -1, "sym": False},
     {"a_bits": 4, "rotate": True, "a_clip_ratio": 0.9, "mse_clip": True, "alpha": 0.0, "seed": 7}],
)
def test_json_round_trip(changes):
    cfg = QuantConfig(**changes)
    again = QuantConfig.from_json(cfg.to_json())
    assert again == cfg
    assert json.loads(cfg.to_json())["method"] == cfg.method


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("method", "awq", "one of rtn, gptq, gptaq"),
        ("w_bits", 9, "an integer in 2..8"),
        ("w_bits", 1, "an integer in 2..8"),
        ("w_bits", True, "an integer in 2..8"),
        ("group_size", 96, "power of two"),
        ("group_size", 0, "power of two"),
        ("alpha", 1.5, "[0, 1]"),
        ("damp", 0.0, "(0, 1]"),
        ("block_size", 100, "power of two"),
        ("a_bits", 6, "16 (off), 8 or 4"),
        ("a_clip_ratio", 0.0, "(0, 1]"),
        ("sym", "yes", "true or false"),
        ("seed", -1, "non-negative"),
    ],
)
def test_bad_values_name_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ConfigError) as info:
        QuantConfig(**{field: value})
    message = str(info.value)
    assert f"QuantConfig.{field}={value!r}" in message and allowed in message
    assert "\n" not in message
    assert isinstance(info.value, UserError)


def test_unknown_key_rejected_and_frozen():
    with pytest.raises(ConfigError, match="wbits"):
        QuantConfig.from_dict({"wbits": 4})
    with pytest.raises(Exception):
        QuantConfig().w_bits = 3  # type: ignore[misc]
