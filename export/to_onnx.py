"""Export a (quantized) model to ONNX: ``out_dir/model.onnx`` + ``export.json`` (+ tokenizer files).

Flow (:func:`export_onnx`):

1. Resolve the source — a quantized checkpoint directory, an in-memory model, or an FP model
   name / directory — and refuse, before any heavy work, what the target cannot run
   (:func:`export.check.check_capability`).
2. Trace with ``torch.onnx.export(..., dynamo=True)``. Every
   :class:`~quantize.qmodel.QuantLinear` is traced as a plain MatMul with its dequantized weight
   (its input quantizer is switched off while tracing).

   * Decoder LLMs take ``input_ids [B,S]``, ``attention_mask [B,P+S]``, ``position_ids [B,S]``
     and ``past_key_values.{i}.key/value [B,kv_heads,P,head_dim]`` and return ``logits`` and
     ``present.{i}.key/value [B,kv_heads,P+S,head_dim]``; one graph serves prefill (P = 0)
     and decode. Without KV cache: ``input_ids, attention_mask -> logits``.
   * Vision transformers (transformers ``ViTForImageClassification``, timm
     ``VisionTransformer``) take ``pixel_values [B,3,H,W]`` and return ``logits``.

   Batch, sequence and past lengths are dynamic. Sample inputs use batch 2 and distinct
   lengths so that no dimension is specialised to 0/1.
3. Post-pass (:mod:`export.qdq`): quantized weights become INT4/INT8 ``DequantizeLinear``
   blocks, activation quantizers become float quant-dequant subgraphs.
4. ``onnx.checker`` full check, then everything is written into a temporary sibling
   directory that is renamed to ``out_dir`` when complete (nothing half-written).

The same source and config give the same ``model.onnx`` bytes.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from quantize.atomic import replace_dir
from quantize.errors import UserError

from .check import PROTOBUF_LIMIT, ExportError, check_capability, check_model
from .config import ExportConfig
from .scheme import ActQuantSpec, LayerScheme, layers_from_meta, scheme_name

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
EXPORT_JSON = "export.json"
FORMAT_VERSION = 1
#: Files of a saved tokenizer / generation config copied next to ``model.onnx``.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json", "generation_config.json")
#: Node metadata kept in the graph (module path and class of every node); the rest (stack
#: traces with local file paths, FX node dumps) is dropped so the bytes do not depend on where
#: the code is installed.
KEEP_METADATA = ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy")
#: The export wrappers hold the model as ``self.model``: module ``a.b`` is scope ``model.a.b``.
SCOPE_PREFIX = "model."
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------
# source
# ---------------------------------------------------------------------------------------


@dataclass
class Source:
    """A model to export with what export.json records about where it came from."""

    model: nn.Module
    kind: str  # "checkpoint" | "model" | "pretrained"
    description: str
    path: Path | None = None
    meta: dict[str, Any] | None = None
    tokenizer: Any = None
    owned: bool = True  # False: the caller's object, restore anything we change
    fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _sha256_files(paths: list[Path], *, names: bool = True) -> str:
    """SHA-256 over the files' contents (each preceded by its name unless ``names=False``)."""
    h = hashlib.sha256()
    for p in paths:
        if names:
            h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _sha256_state(model: nn.Module) -> str:
    """Fingerprint of a model's tensors and quantization codes (names, dtypes, shapes, bytes)."""
    from quantize.qmodel import QuantLinear

    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    tensors = dict(model.state_dict())
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear) and m.is_quantized:
            for k in ("codes", "scales", "zeros", "g_idx"):
                tensors[f"{name}.{k}"] = getattr(m, k)
            tensors[f"{name}.input_quant"] = torch.tensor([m.input_quant.bits, int(m.input_quant.sym), m.input_quant.clip_ratio])
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def resolve_source(src: str | os.PathLike | nn.Module) -> Source:
    """Turn ``src`` into a :class:`Source` (user mistakes raise a one-line :class:`UserError`)."""
    if isinstance(src, nn.Module):
        return Source(src, "model", type(src).__name__, owned=False)
    if not isinstance(src, (str, os.PathLike)):
        raise UserError(f"cannot export {type(src).__name__}: pass a checkpoint directory, a model name or a model")
    from quantize.checkpoint import QUANT_CONFIG, WEIGHTS, load_quantized, read_meta

    text = os.fspath(src)
    path = Path(text)
    if path.is_dir():
        if (path / QUANT_CONFIG).exists() or ((path / WEIGHTS).exists() and not (path / "config.json").exists()):
            meta = read_meta(path)  # one-line error when it is not a complete checkpoint
            model = load_quantized(path)
            fp = _sha256_files([path / QUANT_CONFIG, path / WEIGHTS])
            return Source(model, "checkpoint", str(path), path=path, meta=meta, fingerprint=fp)
        if not (path / "config.json").exists():
            raise UserError(f"{path} is neither a quantized checkpoint (no {QUANT_CONFIG} / {WEIGHTS}) "
                            "nor a transformers model directory (no config.json)")
    elif path.exists() and path.suffix != ".gguf":
        raise UserError(f"{path} is a file, not a quantized checkpoint directory or a model name")
    elif not path.exists() and (text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text):
        raise UserError(f"{path} does not exist")
    from quantize.loading import load_model

    loaded = load_model(text)
    src_path = path if path.exists() else None
    return Source(loaded.model, "pretrained", text, path=src_path, tokenizer=loaded.tokenizer, extra={"source": loaded.source})


def layer_schemes(model: nn.Module, a_bits: int | None) -> list[LayerScheme]:
    """Scheme of every quantized Linear of a loaded model (cheap: no weight conversion)."""
    from quantize.qmodel import QuantLinear

    out = []
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear) and m.is_quantized:
            iq = m.input_quant
            act = ActQuantSpec(iq.bits, bool(iq.sym), float(iq.clip_ratio)) if iq.bits < 16 and a_bits is None else None
            sym = bool(torch.all(m.zeros == (1 << (m.bits - 1))))
            out.append(LayerScheme(name, int(m.bits), sym, act, int(m.group_size)))
    return out


# ---------------------------------------------------------------------------------------
# wrappers
# ---------------------------------------------------------------------------------------


class _CausalLMWithCache(nn.Module):
    """Flat-KV-cache signature around a transformers causal LM (one graph: prefill and decode)."""

    def __init__(self, model: nn.Module, num_layers: int) -> None:
        super().__init__()
        self.model = model
        self.num_layers = num_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)])
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


class _CausalLM(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


class _HFImageClassifier(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


class _TimmClassifier(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values)


@dataclass
class _Plan:
    """What to trace: wrapper, sample inputs, names and dynamic axes, plus export.json facts."""

    wrapper: nn.Module
    args: tuple
    dynamic_shapes: dict[str, Any]
    input_names: list[str]
    output_names: list[str]
    task: str
    info: dict[str, Any]


def _llm_plan(model: nn.Module, config: ExportConfig, dtype: torch.dtype) -> _Plan:
    from torch.export import Dim

    cfg = model.config
    n_layers = int(cfg.num_hidden_layers)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    vocab = int(cfg.vocab_size)
    batch, seq, past_len = 2, 3, 5  # distinct, > 1: nothing gets specialised
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    b, s = Dim("batch"), Dim("sequence")
    info = {"kv_cache": None, "vocab_size": vocab}
    if not config.kv_cache:
        mask = torch.ones(batch, seq, dtype=torch.int64)
        shapes = {"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}}
        return _Plan(_CausalLM(model), (ids, mask), shapes, ["input_ids", "attention_mask"], ["logits"], "causal-lm", info)
    p, t = Dim("past_sequence"), Dim("total_sequence")
    mask = torch.ones(batch, past_len + seq, dtype=torch.int64)
    pos = torch.arange(past_len, past_len + seq).expand(batch, seq).contiguous()
    past = tuple(torch.randn(batch, n_kv, past_len, head_dim, generator=gen).to(dtype) for _ in range(2 * n_layers))
    shapes = {"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: t}, "position_ids": {0: b, 1: s},
              "past": tuple({0: b, 2: p} for _ in range(2 * n_layers))}
    kv_names = [f"{{}}.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
    inputs = ["input_ids", "attention_mask", "position_ids"] + [n.format("past_key_values") for n in kv_names]
    outputs = ["logits"] + [n.format("present") for n in kv_names]
    info["kv_cache"] = {"num_layers": n_layers, "num_kv_heads": n_kv, "head_dim": head_dim}
    return _Plan(_CausalLMWithCache(model, n_layers), (ids, mask, pos, *past), shapes, inputs, outputs, "causal-lm", info)


def _vision_plan(model: nn.Module, library: str, dtype: torch.dtype) -> _Plan:
    from torch.export import Dim

    if library == "timm":
        size = tuple(int(v) for v in model.patch_embed.img_size)
        channels = int(getattr(model.patch_embed.proj, "in_channels", 3))
        wrapper: nn.Module = _TimmClassifier(model)
    else:
        cfg = model.config
        size = (int(cfg.image_size),) * 2 if isinstance(cfg.image_size, int) else tuple(int(v) for v in cfg.image_size)
        channels = int(cfg.num_channels)
        wrapper = _HFImageClassifier(model)
    pixels = torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(0)).to(dtype)
    info = {"image": {"channels": channels, "height": size[0], "width": size[1]}}
    return _Plan(wrapper, (pixels,), {"pixel_values": {0: Dim("batch")}}, ["pixel_values"], ["logits"],
                 "image-classification", info)


# ---------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _float_linears(model: nn.Module) -> Iterator[None]:
    """Switch every input quantizer off (the post-pass inserts them as ONNX ops), restore after."""
    from quantize.qmodel import ActivationQuantizer

    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    saved = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        yield
    finally:
        for q, e in zip(quantizers, saved):
            q.enabled = e


def _trace(plan: _Plan, opset: int):
    """``torch.onnx.export(dynamo=True)`` of the plan; returns the ModelProto."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(plan.wrapper.eval(), plan.args, dynamo=True, dynamic_shapes=plan.dynamic_shapes,
                                        input_names=plan.input_names, output_names=plan.output_names,
                                        opset_version=opset, optimize=True, verbose=False, report=False)
    except Exception as exc:  # the exporter raises many types; keep the first line, chain the rest
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx export failed ({type(exc).__name__}): {first}") from exc
    return program.model_proto


def _clean_metadata(model) -> None:
    for node in model.graph.node:
        keep = [(p.key, p.value) for p in node.metadata_props if p.key in KEEP_METADATA]
        del node.metadata_props[:]
        for k, v in keep:
            node.metadata_props.add(key=k, value=v)


def _name_by_module(model) -> None:
    """Give the exporter's anonymous nodes (``node_*``) the name of the module they belong to,
    ``{module}/{op_type}`` (e.g. ``model.layers.0.mlp.down_proj.input_transform/MatMul``), so
    profiles and error messages point back to the PyTorch model. Runs after the INT4 rewrite,
    which names its own nodes; names stay unique and deterministic."""
    from .qdq import node_scopes

    taken = {n.name for n in model.graph.node}
    for node in model.graph.node:
        scopes = node_scopes(node)
        if not node.name.startswith("node_") or len(scopes) < 2 or not scopes[-2].startswith(SCOPE_PREFIX):
            continue
        base = f"{scopes[-2][len(SCOPE_PREFIX):]}/{node.op_type}"
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        node.name = name


def _io_spec(values) -> list[dict[str, Any]]:
    from onnx import helper

    out = []
    for v in values:
        tt = v.type.tensor_type
        dims = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in tt.shape.dim]
        out.append({"name": v.name, "dtype": helper.tensor_dtype_to_np_dtype(tt.elem_type).name, "shape": dims})
    return out


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output directory {out} already exists; pass --overwrite to replace it")


def _versions() -> dict[str, str]:
    import onnx
    import onnxscript
    import transformers

    from quantize.checkpoint import versions

    v = versions()
    v.update({"onnx": onnx.__version__, "onnxscript": onnxscript.__version__, "transformers": transformers.__version__})
    try:
        import onnxruntime

        v["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover - optional at export time
        pass
    return dict(sorted(v.items()))


def _tokenizer_facts(source: Source, model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None and cfg is not None:
        eos = getattr(cfg, "eos_token_id", None)
    if source.tokenizer is not None and getattr(source.tokenizer, "eos_token_id", None) is not None:
        eos = source.tokenizer.eos_token_id
    pad = getattr(cfg, "pad_token_id", None) if cfg is not None else None
    eos_list = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])] if eos is not None else []
    return {"eos_token_id": eos_list, "pad_token_id": pad}


def _write_tokenizer(source: Source, directory: Path) -> list[str]:
    written = []
    if source.path is not None and source.path.is_dir():
        for name in TOKENIZER_FILES:
            if (source.path / name).is_file():
                shutil.copyfile(source.path / name, directory / name)
                written.append(name)
    if not written and source.tokenizer is not None:
        source.tokenizer.save_pretrained(str(directory))
        written = sorted(p.name for p in directory.iterdir() if p.name in TOKENIZER_FILES)
    return written


def export_onnx(src: str | os.PathLike | nn.Module, out_dir: str | os.PathLike, config: ExportConfig | None = None, *,
                overwrite: bool = False, tokenizer: Any = None) -> Path:
    """Export ``src`` to ``out_dir/model.onnx`` (+ ``export.json``, tokenizer files); returns ``out_dir``.

    Args:
        src: a quantized checkpoint directory (:func:`quantize.save_quantized`), a model object
            (quantized in memory or FP), or an FP model name / directory for
            :func:`quantize.loading.load_model`.
        out_dir: created; an existing non-empty directory needs ``overwrite``.
        config: :class:`ExportConfig` (default: ORT, fp32, opset 21, KV cache).
        tokenizer: saved next to the model when ``src`` is a model object.

    Raises:
        UserError (one line): bad source, existing output, a scheme the target cannot run
        (:class:`~export.check.CapabilityError`), a model that cannot be exported or checked
        (:class:`~export.check.ExportError`).
    """
    config = config or ExportConfig()
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    pre_source = Path(os.fspath(src)) if isinstance(src, (str, os.PathLike)) else None
    if pre_source is not None and pre_source.is_dir():
        from quantize.checkpoint import QUANT_CONFIG, read_meta

        if (pre_source / QUANT_CONFIG).exists():  # refuse from the metadata, before loading any weight
            check_capability(layers_from_meta(read_meta(pre_source), config.a_bits), config)
    source = resolve_source(src)
    if tokenizer is not None:
        source.tokenizer = tokenizer
    from quantize.arch import spec_for

    model = source.model
    spec = spec_for(model)
    layers = layer_schemes(model, config.a_bits)
    check_capability(layers, config)
    if not source.fingerprint:
        source.fingerprint = _sha256_state(model)

    dtype = _DTYPES[config.dtype]
    model_dtype = next(model.parameters()).dtype
    if model_dtype != dtype:
        if not source.owned:
            model = copy.deepcopy(model)
        model = model.to(dtype)
    model.eval()

    from .qdq import quant_weights, rewrite_quantized

    weights = quant_weights(model, config.a_bits, ort_blocks=config.target == "ort")
    plan = _llm_plan(model, config, dtype) if spec.modality == "text" else _vision_plan(model, spec.library, dtype)
    graph = _graph_kind(model, spec, config)
    if graph == "fused":
        from .ort_fused import build_fused_decoder

        proto, mapping = build_fused_decoder(model, spec, config, weights)
    else:
        device = next(model.parameters()).device
        plan.args = tuple(a.to(device) for a in plan.args)
        with _float_linears(model):
            proto = _trace(plan, config.opset)
        _clean_metadata(proto)
        mapping = rewrite_quantized(proto, weights, dtype=config.dtype, scope_prefix=SCOPE_PREFIX) if weights else {}
        _name_by_module(proto)
    if len(mapping) != len(layers):
        raise ExportError(f"internal error: {len(layers)} quantized Linears but {len(mapping)} rewritten")
    scheme = scheme_name(layers, config.dtype)
    _set_model_metadata(proto, scheme, source)

    large = sum(len(t.raw_data) for t in proto.graph.initializer) > PROTOBUF_LIMIT
    if not large:
        check_model(proto)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        import onnx

        model_path = tmp / MODEL_FILE
        if config.share_embedding:
            from .external_data import save_deduplicated

            saved = save_deduplicated(proto, model_path, DATA_FILE)
            log.info("shared embedding: %.1f MB stored once", saved / 1e6)
            check_model(model_path)
            large = True
        elif large:
            onnx.save_model(proto, str(model_path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=DATA_FILE, size_threshold=1024)
            check_model(model_path)
        else:
            onnx.save_model(proto, str(model_path))
        tokenizer_files = _write_tokenizer(source, tmp) if spec.modality == "text" else []
        meta = {
            "format_version": FORMAT_VERSION,
            "model_file": MODEL_FILE,
            "external_data": DATA_FILE if large else None,
            "onnx_sha256": _sha256_files([model_path], names=False),
            "task": plan.task,
            "arch": spec.name,
            "graph": graph,
            "config": config.to_dict(),
            "opset": config.opset,
            "dtype": config.dtype,
            "source": {"kind": source.kind, "description": source.description, "fingerprint": source.fingerprint,
                       "path": str(source.path.resolve()) if source.path else None,
                       "quant_config": source.meta["quant_config"].to_dict() if source.meta else None, **source.extra},
            "scheme": _scheme_json(scheme, layers, weights, mapping, config),
            "inputs": _io_spec(proto.graph.input),
            "outputs": _io_spec(proto.graph.output),
            "max_seq_len": config.max_seq_len if plan.task == "causal-lm" else None,
            "tokenizer_files": tokenizer_files,
            **plan.info,
            **(_tokenizer_facts(source, model) if plan.task == "causal-lm" else {}),
            "versions": _versions(),
        }
        (tmp / EXPORT_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s (%s, %d quantized Linears) to %s", source.description, scheme, len(mapping), out / MODEL_FILE)
    return out


def _graph_kind(model: nn.Module, spec, config: ExportConfig) -> str:
    """``"fused"`` or ``"generic"`` for this model and config (``graph="fused"`` that cannot be: UserError)."""
    if config.graph == "generic":
        return "generic"
    if spec.modality != "text":
        if config.graph == "fused":
            raise UserError(f"--graph fused is for decoder LLMs; {spec.name} is a vision model (use --graph auto or generic)")
        if config.share_embedding:
            raise UserError(f"--share-embedding is for decoder LLMs; {spec.name} is a vision model")
        return "generic"
    from .ort_fused import unsupported_reason

    reason = unsupported_reason(model, spec, config)
    if reason is None:
        return "fused"
    if config.share_embedding:
        raise UserError(f"--share-embedding needs the fused graph, which is not possible for this model: {reason}")
    if config.graph == "fused":
        raise UserError(f"--graph fused is not possible for this model: {reason}; use --graph generic")
    log.info("generic graph: %s", reason)
    return "generic"


def _set_model_metadata(proto, scheme: str, source: Source) -> None:
    entries = {"gptaq_deploy.scheme": scheme, "gptaq_deploy.source_fingerprint": source.fingerprint}
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    for k, v in keep + sorted(entries.items()):
        proto.metadata_props.add(key=k, value=v)


def _scheme_json(scheme: str, layers: list[LayerScheme], weights, mapping: dict, config: ExportConfig) -> dict[str, Any]:
    first = layers[0] if layers else None
    return {
        "name": scheme,
        "quantized_layers": len(layers),
        "weight_bits": sorted({lay.bits for lay in layers}),
        "group_size": sorted({lay.group_size for lay in layers}),
        "symmetric": sorted({lay.symmetric for lay in layers}),
        "activation_bits": sorted({lay.act.bits if lay.act else 16 for lay in layers}),
        "activation_sym": first.act.sym if first is not None and first.act else None,
        "activation_clip_ratio": first.act.clip_ratio if first is not None and first.act else None,
        "activation_quant_dropped": config.a_bits == 16,
        "scale_dtype": config.dtype,
        "layers": mapping,
    }
