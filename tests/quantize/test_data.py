import json
import logging
import sys

import pytest
import torch

from quantize.data import (
    CalibConfig,
    calibration_tokens,
    check_modality,
    default_corpus,
    eval_tokens,
    load_images,
    load_texts,
    sample_windows,
    tokenize_corpus,
)
from quantize.errors import ConfigError, UserError

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "A second document.\nWith two lines."]


class CharTokenizer:
    """One id per character: enough to check joining, windows and determinism without downloads."""

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [ord(c) % 251 for c in text]}


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A real PreTrainedTokenizerFast (byte-level BPE trained here) with a tiny model_max_length."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES * 4 + default_corpus("calibration")[:3], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=16)


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- CalibConfig

def test_calib_config_defaults_and_round_trip():
    cfg = CalibConfig()
    assert (cfg.source, cfg.nsamples, cfg.seqlen, cfg.seed, cfg.split) == (None, 128, 2048, 0, "train")
    assert CalibConfig.from_json(CalibConfig(source="x.txt", nsamples=4).to_json()) == CalibConfig(source="x.txt", nsamples=4)


@pytest.mark.parametrize("field, value", [("nsamples", 0), ("seqlen", 7), ("seed", -1), ("nsamples", True), ("source", ""), ("split", "")])
def test_calib_config_rejects(field, value):
    with pytest.raises(ConfigError) as info:
        CalibConfig(**{field: value})
    assert f"CalibConfig.{field}" in one_line(info)


# ----------------------------------------------------------------------------- text sources

def test_load_txt_jsonl_parquet_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("whole file\n\nis one document")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "first"}) + "\n\n" + json.dumps({"id": 3, "body": "second"}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "sub").mkdir()
    pq.write_table(pa.table({"n": [1, 2], "text": ["p1", "p2"]}), tmp_path / "sub" / "c.parquet")
    (tmp_path / "README.md").write_text("ignored in folders")
    assert load_texts(str(tmp_path / "a.txt")) == ["whole file\n\nis one document"]
    assert load_texts(str(tmp_path / "b.jsonl")) == ["first", "second"]
    assert load_texts(str(tmp_path / "sub" / "c.parquet")) == ["p1", "p2"]
    assert load_texts(str(tmp_path)) == ["whole file\n\nis one document", "first", "second", "p1", "p2"]


@pytest.mark.parametrize("name, content, expected", [
    ("empty.txt", "  \n", "empty.txt is empty"),
    ("data.csv", "a,b", "unsupported text file"),
    ("bad.jsonl", "{not json}\n", "bad.jsonl:1 is not valid JSON"),
])
def test_bad_local_files(tmp_path, name, content, expected):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError) as info:
        load_texts(str(tmp_path / name))
    assert expected in one_line(info)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist") as info:
        load_texts(str(tmp_path / "nope.txt"))
    assert "nope.txt" in one_line(info)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no"):
        load_texts(str(tmp_path / "empty"))


@pytest.mark.parametrize("name", ["wikitext2", "c4", "no-such/dataset"])
def test_dataset_name_failure_is_one_line(monkeypatch, name):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fail(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("Couldn't reach 'x' on the Hub\n(LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(UserError) as info:
        load_texts(name, split="test")
    message = one_line(info)
    assert message.startswith(f"cannot load dataset '{name}' (ConnectionError: Couldn't reach")
    assert message.endswith("pass a local .txt/.jsonl/.parquet file or directory instead")
    if name == "wikitext2":
        assert calls[0] == (("wikitext", "wikitext-2-raw-v1"), {"split": "test"})
    if name == "c4":  # no test split: the validation shard
        assert calls[0][1]["split"] == "validation" and "c4-validation" in calls[0][1]["data_files"]["validation"]


def test_dataset_name_rows_are_kept_verbatim(monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = datasets.Dataset.from_dict({"sentence": ["a b", "", "c"]})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: rows)
    assert load_texts("ptb") == ["a b", "", "c"]
    with pytest.raises(UserError, match="no 'text' column"):
        load_texts("some/other")


def test_data_module_imports_without_datasets():
    code = "import sys; import quantize.data; assert 'datasets' not in sys.modules and 'PIL' not in sys.modules"
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_default_corpus_parts_are_disjoint_and_substantial():
    calib, evaluation = default_corpus("calibration"), default_corpus("evaluation")
    assert calib and evaluation and not set(calib) & set(evaluation)
    assert sum(map(len, calib)) > 3 * sum(map(len, evaluation)) > 50_000
    with pytest.raises(UserError):
        default_corpus("test")


# ----------------------------------------------------------------------------- tokens

def test_tokenize_corpus_joins_with_blank_line():
    ids = tokenize_corpus(["ab", "c"], CharTokenizer())
    assert ids.dtype == torch.int64 and ids.tolist() == [ord(c) for c in "ab\n\nc"]


def test_tokenize_corpus_chunks_equal_one_call_at_boundaries(monkeypatch):
    import quantize.data as data

    whole = tokenize_corpus(SENTENCES * 3, CharTokenizer())
    monkeypatch.setattr(data, "_CHUNK_CHARS", 10)
    assert torch.equal(tokenize_corpus(SENTENCES * 3, CharTokenizer()), whole)


def test_tokenize_corpus_with_hf_tokenizer_is_silent(hf_tokenizer):
    text = " ".join(SENTENCES * 5)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logger = logging.getLogger("transformers")  # does not propagate to the root logger
    hf_logger.addHandler(handler)
    try:
        ids = tokenize_corpus([text, text], hf_tokenizer)
    finally:
        hf_logger.removeHandler(handler)
    assert not [r for r in records if "sequence length" in r.getMessage()]
    assert not hf_tokenizer.deprecation_warnings.get("sequence-length-is-longer-than-the-specified-maximum")
    expected = hf_tokenizer(text + "\n\n" + text, add_special_tokens=False, verbose=False)["input_ids"]
    assert ids.tolist() == expected and len(expected) > hf_tokenizer.model_max_length


def test_sample_windows_deterministic_and_in_range():
    tokens = torch.arange(100)
    a, b, c = (sample_windows(tokens, 8, 10, seed) for seed in (1, 1, 2))
    assert a.shape == (8, 10) and a.dtype == torch.int64
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a - a[:, :1], torch.arange(10).expand(8, 10))  # contiguous windows
    assert int(a.max()) <= 98  # start <= N - seqlen - 1, like the reference sampler


def test_sample_windows_too_little_data():
    assert sample_windows(torch.arange(11), 3, 10, 0).tolist() == [list(range(10))] * 3
    with pytest.raises(UserError) as info:
        sample_windows(torch.arange(10), 3, 10, 0)
    assert "calibration text has 10 tokens; need at least seqlen+1 = 11 for --seqlen 10" in one_line(info)


def test_calibration_and_eval_tokens(tmp_path, hf_tokenizer):
    cfg = CalibConfig(nsamples=4, seqlen=32, seed=3)
    windows = calibration_tokens(cfg, hf_tokenizer)
    assert windows.shape == (4, 32) and torch.equal(windows, calibration_tokens(cfg, hf_tokenizer))
    assert eval_tokens(None, hf_tokenizer).numel() > 10_000
    (tmp_path / "t.txt").write_text(SENTENCES[0])
    assert eval_tokens(str(tmp_path / "t.txt"), hf_tokenizer).tolist() == hf_tokenizer(SENTENCES[0], add_special_tokens=False)["input_ids"]
    with pytest.raises(UserError, match="need at least seqlen\\+1"):
        calibration_tokens(CalibConfig(source=str(tmp_path / "t.txt"), seqlen=2048), hf_tokenizer)


# ----------------------------------------------------------------------------- images

@pytest.fixture
def image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for label, (name, color) in enumerate([("cat", (255, 0, 0)), ("dog", (0, 0, 255))]):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB" if i else "L", (6 + i, 5), color if i else 128).save(tmp_path / "imgs" / name / f"{i}.png")
    (tmp_path / "imgs" / "dog" / "notes.txt").write_text("not an image")
    return tmp_path / "imgs"


def to_tensor_4x4(image):
    assert image.mode == "RGB"
    pixels = torch.frombuffer(bytearray(image.resize((4, 4)).tobytes()), dtype=torch.uint8)
    return pixels.reshape(4, 4, 3).permute(2, 0, 1).float() / 255


def test_load_image_folder(image_folder):
    images, labels = load_images(str(image_folder), to_tensor_4x4, None, 0)
    assert images.shape == (6, 3, 4, 4) and images.dtype == torch.float32
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.allclose(images[1, 0], torch.ones(4, 4)) and torch.allclose(images[4, 2], torch.ones(4, 4))
    sub, sub_labels = load_images(str(image_folder), to_tensor_4x4, 3, 7)
    again, _ = load_images(str(image_folder), to_tensor_4x4, 3, 7)
    assert sub.shape == (3, 3, 4, 4) and torch.equal(sub, again) and len(sub_labels) == 3
    with pytest.raises(UserError, match="has 6 images"):
        load_images(str(image_folder), to_tensor_4x4, 7, 0)


def test_load_images_errors(tmp_path, image_folder, monkeypatch):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no") as info:
        load_images(str(tmp_path / "empty"), to_tensor_4x4, None, 0)
    one_line(info)
    with pytest.raises(UserError, match="fixed"):
        load_images(str(image_folder), lambda im: torch.zeros(3, im.size[0], 2), None, 0)
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(UserError) as info:
        load_images("imagenet-1k", to_tensor_4x4, 8, 0)
    assert one_line(info).startswith("cannot load dataset 'imagenet-1k' (OSError: offline); pass a local image folder")


# ----------------------------------------------------------------------------- check_modality

@pytest.mark.parametrize("calib, modality, fragment", [
    (torch.rand(2, 3, 8, 8), "text", "float tensor of shape [2, 3, 8, 8] (images)"),
    (torch.zeros(2, 16, dtype=torch.int64), "image", "integer tensor of shape [2, 16] (token ids)"),
    (["some text"], "image", "a list of 1 texts"),
    (torch.rand(2, 8), "image", "2-D float tensor"),
])
def test_check_modality_mismatch(calib, modality, fragment):
    with pytest.raises(UserError) as info:
        check_modality(calib, modality)
    assert fragment in one_line(info)


def test_check_modality_accepts_matching_data(tmp_path, image_folder):
    check_modality(torch.zeros(2, 16, dtype=torch.int64), "text")
    check_modality(torch.rand(2, 3, 8, 8), "image")
    check_modality(["text"], "text")
    check_modality("wikitext2", "text")
    check_modality(str(image_folder), "image")
    with pytest.raises(UserError, match="image folder"):
        check_modality(str(image_folder), "text")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(UserError, match="text file"):
        check_modality(str(tmp_path / "t.txt"), "image")


def test_load_images_from_dataset_name(monkeypatch):
    Image = pytest.importorskip("PIL.Image")
    datasets = pytest.importorskip("datasets")
    rows = datasets.Dataset.from_dict({"img": [Image.new("L", (4, 4), v) for v in (0, 255, 51)], "label": [2, 0, 1]})
    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: seen.append((a, k)) or rows)
    images, labels = load_images("cifar-like", to_tensor_4x4, None, 0, split="test")
    assert seen == [(("cifar-like",), {"split": "test"})]
    assert labels.tolist() == [2, 0, 1] and images.shape == (3, 3, 4, 4)
    assert torch.allclose(images[:, :, 0, 0].mean(1), torch.tensor([0.0, 1.0, 0.2]))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_dict({"text": ["x"]}))
    with pytest.raises(UserError, match="needs rows with an image and a label column"):
        load_images("text-only", to_tensor_4x4, None, 0)
