"""Optimization-profile ranges and shapes from an export's dynamic axes (pure functions)."""

from __future__ import annotations

import pytest

from quantize.errors import UserError
from runtime.profiles import default_ranges, parse_profile, profile_shapes, resolve_ranges, unused_ranges

LLM_INPUTS = [
    {"name": "input_ids", "shape": ["batch", "sequence"]},
    {"name": "attention_mask", "shape": ["batch", "total_sequence"]},
    {"name": "position_ids", "shape": ["batch", "sequence"]},
    {"name": "past_key_values.0.key", "shape": ["batch", 2, "past_sequence", 16]},
]
LLM_META = {"task": "causal-lm", "max_seq_len": 64, "kv_cache": {"num_layers": 1, "num_kv_heads": 2, "head_dim": 16}}


@pytest.mark.parametrize("text,expected", [
    ("batch=1:2:8", ("batch", 1, 2, 8)),
    ("past=0:16:63", ("past_sequence", 0, 16, 63)),
    ("total=1:1:64", ("total_sequence", 1, 1, 64)),
    ("sequence=5", ("sequence", 5, 5, 5)),
])
def test_parse_profile(text, expected):
    assert parse_profile(text) == expected


@pytest.mark.parametrize("text", ["batch", "batch=1:2", "=1:1:1", "batch=a:b:c", "batch=1:2:3:4"])
def test_parse_profile_rejects_malformed(text):
    with pytest.raises(UserError, match="NAME=MIN:OPT:MAX"):
        parse_profile(text)


def test_default_ranges_follow_the_export():
    assert default_ranges(LLM_META) == {"batch": (1, 1, 4), "sequence": (1, 64, 64), "past_sequence": (0, 63, 63)}
    long = default_ranges({**LLM_META, "max_seq_len": 4096})
    assert long["sequence"] == (1, 128, 4096) and long["past_sequence"] == (0, 128, 4095)
    assert default_ranges({**LLM_META, "kv_cache": None}) == {"batch": (1, 1, 4), "sequence": (1, 64, 64)}
    assert default_ranges({"task": "image-classification"}) == {"batch": (1, 1, 4)}
    assert default_ranges({}) == {}


def test_total_sequence_is_derived_and_capped():
    ranges = resolve_ranges(LLM_META, [("sequence", 1, 8, 32), ("past", 0, 24, 40)])
    # min = 1 + 0, opt = 8 + 24, max = 32 + 40 capped at max_seq_len 64
    assert ranges["total_sequence"] == (1, 32, 64)
    explicit = resolve_ranges(LLM_META, [("total", 1, 2, 3)])
    assert explicit["total_sequence"] == (1, 2, 3)


def test_llm_profile_shapes():
    shapes = profile_shapes(LLM_INPUTS, resolve_ranges(LLM_META, [("batch", 1, 2, 3)]))
    assert shapes["input_ids"] == ((1, 1), (2, 64), (3, 64))
    assert shapes["past_key_values.0.key"] == ((1, 2, 0, 16), (2, 2, 63, 16), (3, 2, 63, 16))
    assert shapes["attention_mask"] == ((1, 1), (2, 64), (3, 64))


def test_static_inputs_need_no_profile():
    assert profile_shapes([{"name": "x", "shape": [1, 3, 8, 8]}], {}) == {}
    vit = profile_shapes([{"name": "pixel_values", "shape": ["batch", 3, 8, 8]}], {"batch": (1, 4, 16)})
    assert vit == {"pixel_values": ((1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))}


def test_missing_ranges_name_the_input_and_the_flag():
    with pytest.raises(UserError, match=r"input x has dimension 'tokens' on axis 1 .* --profile tokens=MIN:OPT:MAX"):
        profile_shapes([{"name": "x", "shape": ["batch", "tokens"]}], {"batch": (1, 1, 1)})
    with pytest.raises(UserError, match="unnamed dynamic dimension"):
        profile_shapes([{"name": "x", "shape": [None, 4]}], {})


@pytest.mark.parametrize("override,message", [
    ([("batch", 0, 1, 2)], "batch must start at 1"),
    ([("sequence", 2, 1, 4)], "0 <= MIN <= OPT <= MAX"),
    ([("past", 0, 0, 0)], "MAX >= 1"),
])
def test_bad_ranges_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        resolve_ranges(LLM_META, override)


def test_no_export_json_and_no_max_seq_len():
    with pytest.raises(UserError, match="max_seq_len"):
        default_ranges({"task": "causal-lm"})
    assert resolve_ranges({}, [("batch", 1, 1, 2)]) == {"batch": (1, 1, 2)}


def test_unused_ranges():
    assert unused_ranges(LLM_INPUTS, ["batch", "sequence", "tokens"]) == ["tokens"]
