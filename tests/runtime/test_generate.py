"""Greedy generation logic over a fake numpy Session (no export needed)."""

from __future__ import annotations

import numpy as np
import pytest

from quantize.errors import UserError
from runtime.base import Session, TensorSpec
from runtime.generate import generate

VOCAB = 11


class CountingLM(Session):
    """Next token = (token + 1 + position) % VOCAB; checks positions and cache lengths it is fed."""

    def __init__(self, kv_cache: bool) -> None:
        self.kv = kv_cache
        self.calls: list[dict] = []
        ins = {"input_ids": TensorSpec("input_ids", np.dtype(np.int64), ("batch", "sequence")),
               "attention_mask": TensorSpec("attention_mask", np.dtype(np.int64), ("batch", "total"))}
        outs = {"logits": TensorSpec("logits", np.dtype(np.float32), ("batch", "sequence", VOCAB))}
        if kv_cache:
            ins["position_ids"] = TensorSpec("position_ids", np.dtype(np.int64), ("batch", "sequence"))
            for i in range(2):
                for kind in ("key", "value"):
                    ins[f"past_key_values.{i}.{kind}"] = TensorSpec(f"p{i}{kind}", np.dtype(np.float16), ("batch", 1, "past", 2))
                    outs[f"present.{i}.{kind}"] = TensorSpec(f"q{i}{kind}", np.dtype(np.float16), ("batch", 1, "total", 2))
        self._in, self._out = ins, outs

    def input_metadata(self):
        return dict(self._in)

    def output_metadata(self):
        return dict(self._out)

    def _run(self, feeds):
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        b, s = ids.shape
        if self.kv:
            past = feeds["past_key_values.0.key"]
            assert past.shape[2] + s == mask.shape[1]
            pos = feeds["position_ids"]
        else:
            pos = np.where(mask == 0, 1, np.cumsum(mask, 1) - 1)
        self.calls.append({"seq": s, "past": mask.shape[1] - s})
        logits = np.zeros((b, s, VOCAB), np.float32)
        nxt = (ids + 1 + pos) % VOCAB
        np.put_along_axis(logits, nxt[..., None], 1.0, axis=-1)
        out = {"logits": logits}
        if self.kv:
            for name in self._out:
                if name.startswith("present."):
                    past = feeds[name.replace("present.", "past_key_values.")]
                    out[name] = np.concatenate([past, np.zeros((b, 1, s, 2), np.float16)], axis=2)
        return out


def _expected(ids, n):
    seq = list(ids)
    for _ in range(n):
        seq.append((seq[-1] + 1 + len(seq) - 1) % VOCAB)
    return seq


@pytest.mark.parametrize("kv", [True, False])
def test_greedy_tokens_and_cache_lengths(kv):
    lm = CountingLM(kv)
    result = generate(lm, [[1, 2, 3], [4, 5, 6]], 4)
    assert result.tokens.tolist() == [_expected([1, 2, 3], 4), _expected([4, 5, 6], 4)]
    if kv:  # prefill with an empty cache, then one token per step
        assert lm.calls == [{"seq": 3, "past": 0}] + [{"seq": 1, "past": p} for p in (3, 4, 5)]
    else:
        assert [c["seq"] for c in lm.calls] == [3, 4, 5, 6]


def test_left_padding_uses_mask_positions():
    lm = CountingLM(True)
    result = generate(lm, [[0, 7, 8], [4, 5, 6]], 2, attention_mask=[[0, 1, 1], [1, 1, 1]])
    assert result.tokens[0].tolist()[1:] == _expected([7, 8], 2)


def test_stops_at_eos_and_pads():
    lm = CountingLM(True)
    # row 0: 1,2,3 -> 6 -> 10 -> 4 ...; row 1: 4,5,6 -> 9 -> 2 ...
    result = generate(lm, [[1, 2, 3], [4, 5, 6]], 5, eos_token_id=[10, 2], pad_token_id=0)
    assert result.new_tokens.tolist() == [[6, 10], [9, 2]]
    result = generate(lm, [[1, 2, 3], [4, 5, 6]], 3, eos_token_id=9, pad_token_id=0)
    assert result.new_tokens.tolist() == [[6, 10, 4], [9, 0, 0]]


def test_bad_requests():
    lm = CountingLM(True)
    with pytest.raises(UserError, match="max_seq_len"):
        generate(lm, [[1, 2, 3]], 10, max_seq_len=8)
    with pytest.raises(UserError, match="input_ids"):
        generate(lm, [[]], 1)
    with pytest.raises(UserError, match="max_new_tokens"):
        generate(lm, [[1]], -1)
