"""Architecture knowledge as data: one :class:`ArchSpec` per model family, in a registry.

The model walker (:mod:`quantize.calibrate`) and the rotation know nothing about model
families; they read where the blocks are, which Linears form the sequential sub-groups (all
members of a group read the same input), which norms feed them and what the head is.

A group entry lists alternative names (e.g. timm's fused ``attn.qkv`` or separate
``attn.q_proj`` / ...); names a block does not have are skipped, and the walker checks that
the groups cover every ``nn.Linear`` of every block, so no layer is ever skipped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .errors import UserError
from .qmodel import QuantLinear

Group = tuple[str, ...]


@dataclass(frozen=True)
class ArchSpec:
    """Where things are in one model family (paths are dotted attribute paths).

    Attributes:
        name: family name used in messages and checkpoints.
        classes: model class names this spec serves.
        library: ``"transformers"`` or ``"timm"`` (how to rebuild the model on load).
        modality: ``"text"`` (token ids in) or ``"image"`` (pixels in).
        blocks: path of the ``ModuleList`` / ``Sequential`` of blocks.
        groups: sequential sub-groups of Linears, relative to a block; members share an input.
        head: path of the output Linear (kept in full precision by default).
        capture_kwargs: extra forward kwargs for the cheap input-capturing pass.
        embedding: path of the token embedding (rotation).
        final_norm: path of the norm before the head (rotation).
        attn_norm, mlp_norm: block-relative norms feeding the first and third group (rotation).
        attn_in, attn_out, mlp_in, mlp_out: block-relative Linears for rotation.
        attn_v: block-relative value projection (rotation folds a per-head Hadamard into its
            output and ``attn_out``'s input).
        replay: ``(submodule, linear, returns_tuple)``: in eval mode the submodule's output
            is ``linear(linear's input)`` (first tuple element when ``returns_tuple``). Once
            that input is final, the walker replays the submodule from the cached input instead
            of recomputing it (e.g. skips Q/K/V and attention in later passes). The linear must
            be the first member of its group.
        fused_decoder: the family is a pre-norm RMSNorm decoder with rotate-half RoPE,
            grouped-query attention and a SiLU-gated MLP, so :mod:`export.ort_fused` can write
            it with ONNX Runtime's fused operators (``GroupQueryAttention``,
            ``SkipSimplifiedLayerNormalization``); it then also needs ``mlp_gate`` / ``mlp_up``
            (block-relative gate and up projections) and ``rotary`` (the model's rotary
            embedding module, which computes the cos/sin tables).
    """

    name: str
    classes: tuple[str, ...]
    library: str
    modality: str
    blocks: str
    groups: tuple[Group, ...]
    head: str
    capture_kwargs: dict[str, Any] = field(default_factory=dict)
    embedding: str | None = None
    final_norm: str | None = None
    attn_norm: str | None = None
    mlp_norm: str | None = None
    attn_in: Group = ()
    attn_out: str | None = None
    mlp_in: Group = ()
    mlp_out: str | None = None
    attn_v: str | None = None
    replay: tuple[tuple[str, str, bool], ...] = ()
    fused_decoder: bool = False
    mlp_gate: str | None = None
    mlp_up: str | None = None
    rotary: str | None = None

    def group_members(self, block: nn.Module) -> list[list[str]]:
        """The groups' Linear names that exist in ``block`` (each group non-empty)."""
        # QuantLinear too: a rotated model's online-Hadamard Linears are wrapped before calibration.
        present = {n for n, m in block.named_modules() if isinstance(m, (nn.Linear, QuantLinear))}
        resolved = [[n for n in group if n in present] for group in self.groups]
        missing = [group for group, names in zip(self.groups, resolved) if not names]
        if missing:
            raise UserError(f"{self.name} block has none of the Linears {list(missing[0])}; is this really a {self.name} model?")
        return resolved


_DECODER = dict(
    library="transformers",
    modality="text",
    blocks="model.layers",
    groups=(
        ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"),
        ("self_attn.o_proj",),
        ("mlp.up_proj", "mlp.gate_proj"),
        ("mlp.down_proj",),
    ),
    head="lm_head",
    capture_kwargs={"use_cache": False, "logits_to_keep": 1},
    embedding="model.embed_tokens",
    final_norm="model.norm",
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    attn_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attn_out="self_attn.o_proj",
    mlp_in=("mlp.up_proj", "mlp.gate_proj"),
    mlp_out="mlp.down_proj",
    attn_v="self_attn.v_proj",
    replay=(("self_attn", "self_attn.o_proj", True), ("mlp", "mlp.down_proj", False)),
    mlp_gate="mlp.gate_proj",
    mlp_up="mlp.up_proj",
    rotary="model.rotary_emb",
)

REGISTRY: tuple[ArchSpec, ...] = (
    ArchSpec(name="llama", classes=("LlamaForCausalLM",), fused_decoder=True, **_DECODER),
    ArchSpec(name="mistral", classes=("MistralForCausalLM",), fused_decoder=True, **_DECODER),
    ArchSpec(name="qwen2", classes=("Qwen2ForCausalLM",), fused_decoder=True, **_DECODER),
    # Qwen3's per-head q/k RMSNorm is not written by the fused builder (yet): generic graph.
    ArchSpec(name="qwen3", classes=("Qwen3ForCausalLM",), **_DECODER),
    ArchSpec(
        name="hf-vit",
        classes=("ViTForImageClassification",),
        library="transformers",
        modality="image",
        blocks="vit.layers",
        groups=(
            ("attention.k_proj", "attention.v_proj", "attention.q_proj"),
            ("attention.o_proj",),
            ("mlp.fc1",),
            ("mlp.fc2",),
        ),
        head="classifier",
        replay=(("attention", "attention.o_proj", True), ("mlp", "mlp.fc2", False)),
    ),
    ArchSpec(
        name="timm-vit",
        classes=("VisionTransformer",),
        library="timm",
        modality="image",
        blocks="blocks",
        groups=(("attn.qkv",), ("attn.proj",), ("mlp.fc1",), ("mlp.fc2",)),
        head="head",
        replay=(("attn", "attn.proj", False), ("mlp", "mlp.fc2", False)),
    ),
    ArchSpec(
        name="timm-eva",
        classes=("Eva",),
        library="timm",
        modality="image",
        blocks="blocks",
        groups=(
            ("attn.qkv", "attn.q_proj", "attn.k_proj", "attn.v_proj"),
            ("attn.proj",),
            ("mlp.fc1", "mlp.fc1_g", "mlp.fc1_x"),
            ("mlp.fc2",),
        ),
        head="head",
    ),
)

#: Config attributes that mark a mixture-of-experts model.
_MOE_MARKERS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")


def supported_names() -> list[str]:
    return [cls for spec in REGISTRY for cls in spec.classes]


def spec_for(model: nn.Module) -> ArchSpec:
    """The spec serving ``model``'s class, or a one-line :class:`UserError` listing the supported ones."""
    cls = type(model).__name__
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if config is not None and any(getattr(config, m, None) for m in _MOE_MARKERS):
        raise UserError(f"mixture-of-experts models are not supported yet ({cls}, model_type {model_type!r}); supported: {', '.join(supported_names())}")
    for spec in REGISTRY:
        if cls in spec.classes:
            return spec
    kind = f"{cls} (model_type {model_type!r})" if model_type else cls
    raise UserError(f"unsupported model {kind}; supported: {', '.join(supported_names())}")


def spec_by_name(name: str) -> ArchSpec:
    for spec in REGISTRY:
        if spec.name == name:
            return spec
    raise UserError(f"unknown architecture {name!r}; known: {', '.join(s.name for s in REGISTRY)}")


def get_module(root: nn.Module, path: str) -> nn.Module:
    """``root.a.b.0.c`` for ``path = "a.b.0.c"``."""
    return root.get_submodule(path)


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def untie_head(model: nn.Module, spec: "ArchSpec") -> bool:
    """Give the LM head a weight of its own when it shares the embedding's; returns whether it did.

    The model config then says ``tie_word_embeddings = False`` (also in a nested text config),
    so saving and reloading keeps them apart; the embedding itself is left as it is.
    """
    head = get_module(model, spec.head)
    embedding = get_module(model, spec.embedding) if spec.embedding else None
    tied = embedding is not None and head.weight.data_ptr() == embedding.weight.data_ptr()
    if tied:
        head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=False)
    config = getattr(model, "config", None)
    if config is not None:
        config.tie_word_embeddings = False
        text_config = getattr(config, "get_text_config", lambda: config)()
        text_config.tie_word_embeddings = False
    return tied
