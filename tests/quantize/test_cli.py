import json

import pytest

from quantize.__main__ import main
from quantize.cli import run_cli
from tiny_models import save_tiny_llama, tiny_text


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(tiny_text())
    return path


def cli(args):
    return run_cli(main, [str(a) for a in args])


def base_args(model_dir, calib_file, out):
    return [model_dir, "--calib", calib_file, "--nsamples", 6, "--seqlen", 24, "--group-size", 32,
            "--batch-size", 3, "--no-progress", "--out", out]


def test_quantize_cli_end_to_end(model_dir, calib_file, tmp_path, capsys):
    out = tmp_path / "q"
    assert cli(base_args(model_dir, calib_file, out)) == 0
    assert {"model.safetensors", "config.json", "quant_config.json", "quant_log.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not (out / ".resume").exists()
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "gptq" and config["bits"] == 4 and config["group_size"] == 32
    meta = json.loads((out / "quant_config.json").read_text())
    assert meta["quant_config"]["method"] == "gptaq" and len(meta["quantized_modules"]) == 14
    assert len(json.loads((out / "quant_log.json").read_text())) == 14
    summary = capsys.readouterr().out
    assert "quantized 14 Linears with gptaq w4 g32" in summary and "group 3 (down_proj)" in summary
    assert "time: load" in summary and "solver" in summary


def test_group_reorder_and_quantized_head_flags(model_dir, calib_file, tmp_path, capsys):
    out = tmp_path / "gar"
    args = base_args(model_dir, calib_file, out) + ["--method", "gptq", "--reorder", "group", "--head-bits", "8"]
    assert cli(args + ["--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["reorder"], printed["act_order"], printed["head_bits"], printed["head_group_size"]) == ("group", False, 8, -1)
    assert cli(args) == 0
    meta = json.loads((out / "quant_config.json").read_text())
    assert meta["quant_config"]["reorder"] == "group" and "lm_head" in meta["quantized_modules"]
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["lm_head"] is True and config["quantization_config"]["desc_act"] is False
    assert "head (lm_head)" in capsys.readouterr().out
    assert cli(base_args(model_dir, calib_file, tmp_path / "ao") + ["--act-order", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["reorder"] == "act"
    split = tmp_path / "split"
    assert cli(base_args(model_dir, calib_file, split) + ["--head-bits", "4", "--head-group-size", "32",
                                                          "--head-int8-rows", "32"]) == 0
    meta = json.loads((split / "quant_config.json").read_text())
    assert meta["quant_config"]["head_int8_rows"] == 32
    assert {"lm_head.parts.0", "lm_head.parts.1"} <= set(meta["quantized_modules"])


def test_rotated_w4a4_cli_records_rotation(model_dir, calib_file, tmp_path, capsys):
    out = tmp_path / "rot"
    assert cli(base_args(model_dir, calib_file, out) + ["--rotate", "--a-bits", "4"]) == 0
    meta = json.loads((out / "quant_config.json").read_text())
    assert meta["quant_config"]["rotate"] and meta["quant_config"]["a_bits"] == 4
    assert sorted(meta["extra"]["rotation"]["online"]) == [f"model.layers.{i}.{m}" for i in range(2)
                                                           for m in ("mlp.down_proj", "self_attn.o_proj")]
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False


@pytest.mark.parametrize("extra, message", [
    (["--w-bits", "9"], "QuantConfig.w_bits=9 is invalid: expected an integer in 2..8"),
    (["--group-size", "100"], "QuantConfig.group_size=100 is invalid"),
    (["--method", "awq"], "invalid choice: 'awq'"),
    (["--seqlen", "100000"], "calibration text has"),
    (["--device", "cuda:7"], "CUDA is not available"),
    (["--act-order", "--reorder", "group"], "--act-order is --reorder act; it contradicts --reorder group"),
    (["--head-bits", "6"], "QuantConfig.head_bits=6 is invalid"),
    (["--head-int8-rows", "16"], "QuantConfig.head_int8_rows=16 is invalid: expected 0 unless head_bits is 4"),
    (["--head-bits", "4", "--head-group-size", "32", "--head-int8-rows", "100000"], "head_int8_rows=100000 leaves no INT4 rows"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(model_dir, calib_file, tmp_path, capsys, extra, message):
    out = tmp_path / "q"
    if extra[0] == "--device":
        pytest.importorskip("torch").cuda.is_available() and pytest.skip("has CUDA")
    assert cli(base_args(model_dir, calib_file, out) + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1  # no traceback, no progress noise
    assert not out.exists() or not any((out).glob("*.safetensors"))


def test_missing_paths_and_unsupported_models(tmp_path, calib_file, capsys):
    assert cli([tmp_path / "nope", "--calib", calib_file, "--out", tmp_path / "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == f"error: model path {tmp_path / 'nope'} does not exist"
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(gpt2)
    assert cli([gpt2, "--method", "rtn", "--out", tmp_path / "o"]) == 2
    err = capsys.readouterr().err
    assert "unsupported model GPT2LMHeadModel" in err and "LlamaForCausalLM" in err
    assert not (tmp_path / "o").exists()


def test_existing_output_refused_unless_overwrite(model_dir, calib_file, tmp_path, capsys):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli(base_args(model_dir, calib_file, out) + ["--method", "rtn"]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert cli(base_args(model_dir, calib_file, out) + ["--method", "rtn", "--overwrite"]) == 0
    assert cli(base_args(model_dir, calib_file, out) + ["--method", "rtn"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_killed_run_resumes_to_identical_checkpoint(model_dir, calib_file, tmp_path, monkeypatch, capsys):
    from quantize import calibrate

    straight = tmp_path / "straight"
    assert cli(base_args(model_dir, calib_file, straight)) == 0
    original = calibrate.BlockWalker.process

    def killed_at_block_1(self, index, state):
        if index == 1:
            raise KeyboardInterrupt  # what Ctrl-C or a kill looks like to the process
        return original(self, index, state)

    out = tmp_path / "resumed"
    monkeypatch.setattr(calibrate.BlockWalker, "process", killed_at_block_1)
    assert cli(base_args(model_dir, calib_file, out)) == 2
    assert (out / ".resume" / "state.json").exists() and not (out / "model.safetensors").exists()
    monkeypatch.setattr(calibrate.BlockWalker, "process", original)
    assert cli(base_args(model_dir, calib_file, out)) == 2
    assert "unfinished run" in capsys.readouterr().err
    assert cli(base_args(model_dir, calib_file, out) + ["--resume"]) == 0
    assert (out / "model.safetensors").read_bytes() == (straight / "model.safetensors").read_bytes()
    assert not (out / ".resume").exists()
