import pytest

from export.config import ExportConfig
from quantize.errors import ConfigError


def test_defaults_and_json_round_trip():
    cfg = ExportConfig()
    assert (cfg.target, cfg.dtype, cfg.opset, cfg.kv_cache, cfg.max_seq_len, cfg.a_bits) == ("ort", "fp32", 21, True, 2048, None)
    other = ExportConfig(target="trt", dtype="fp16", opset=23, kv_cache=False, max_seq_len=512, a_bits=16)
    assert ExportConfig.from_json(other.to_json()) == other


@pytest.mark.parametrize("field,value", [("target", "tensorrt"), ("dtype", "bf16"), ("opset", 20), ("opset", 99),
                                         ("opset", "21"), ("kv_cache", 1), ("max_seq_len", 0), ("max_seq_len", True),
                                         ("a_bits", 4)])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"ExportConfig.{field}="):
        ExportConfig(**{field: value})


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigError, match="fields"):
        ExportConfig.from_dict({"target": "ort", "precision": "int4"})


def test_frozen():
    with pytest.raises(AttributeError):
        ExportConfig().opset = 22  # type: ignore[misc]
