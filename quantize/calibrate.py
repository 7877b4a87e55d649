"""The one model walker: block-by-block GPTAQ / GPTQ calibration (and RTN, which needs no data).

Procedure (GPTAQ, papers.md §1.6), for every block ``l``, with one block on the device:

1. Wrap the block's Linears in :class:`~quantize.qmodel.QuantLinear` (still full precision).
2. FP pass (GPTAQ only): activation quantizers off; run the FP stream ``X_fp`` through the
   block, caching the input of each sub-group; the outputs are the next ``X_fp``.
3. For each sequential sub-group (e.g. ``[k, v, q] -> [o] -> [up, gate] -> [down]``): run the
   quantized stream ``X_q`` until the group's input is seen, accumulate ``H`` (and ``dXXT``
   against the cached FP input), solve every member, install the quantized weights.
4. Run the fully quantized block on ``X_q``: the next block's ``X_q``.

GPTAQ calibrates with activation quantization on in the quantized stream (A→W); GPTQ
calibrates weights with it off and switches it on at the end (W→A). After every block the
walker hands its results to the resume store, so a killed run restarts at the next block.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .arch import ArchSpec, get_module, set_module
from .arch import untie_head as arch_untie_head
from .config import QuantConfig
from .errors import NumericalError, UserError
from .gptq import SolveResult, rtn, solve
from .hessian import HessianAccumulator
from .qmodel import QuantLinear, RowSplitLinear

log = logging.getLogger(__name__)


@dataclass
class BlockInputs:
    """What the first block receives, per calibration batch.

    Attributes:
        hidden: per batch ``[b, seq, d]`` hidden states entering block 0.
        layer_args: ``layer_args[l][k]`` = (extra positional args, kwargs) block ``l`` gets
            for batch ``k`` (attention masks, rotary embeddings, ...), recorded per layer so
            models with per-layer masks (Qwen2 sliding windows) are served exactly.
    """

    hidden: list[torch.Tensor]
    layer_args: list[list[tuple[tuple, dict[str, Any]]]]


@dataclass
class LayerLog:
    """One solved Linear: objective, time and damping (written to ``quant_log.json``)."""

    name: str
    block: int
    group: int
    shape: tuple[int, int]
    loss: float
    seconds: float
    damp: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerLog":
        return cls(d["name"], d["block"], d["group"], tuple(d["shape"]), d["loss"], d["seconds"], d["damp"])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "block": self.block, "group": self.group, "shape": list(self.shape),
                "loss": self.loss, "seconds": round(self.seconds, 4), "damp": self.damp}


class _Catcher(nn.Module):
    """Stands in for a block during input capture: records its inputs, returns the hidden state."""

    def __init__(self, store: list[tuple[tuple, dict[str, Any]]], hidden: list[torch.Tensor] | None) -> None:
        super().__init__()
        self.store, self.hidden = store, hidden

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.hidden is not None:
            self.hidden.append(x)
        self.store.append((args, kwargs))
        return x


class _StopForward(Exception):
    """Raised by an observer once a group's input is seen, to skip the rest of the block.

    PyTorch hooks cannot end a forward early; stopping there saves the part of the block after
    the group (about 40% of all block forwards over the four groups). Only this module raises
    and catches it.
    """


@dataclass
class WalkerState:
    """Streams between blocks and the results so far (what the resume store persists)."""

    next_block: int
    x_q: list[torch.Tensor]
    x_fp: list[torch.Tensor] | None
    logs: list[LayerLog] = field(default_factory=list)


def model_inputs(spec: ArchSpec, batch: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
    """Positional and keyword inputs for ``model(...)`` from a batch of ids or pixels."""
    if spec.modality == "text":
        return (), {"input_ids": batch, **spec.capture_kwargs}
    if spec.library == "transformers":
        return (), {"pixel_values": batch, **spec.capture_kwargs}
    return (batch,), dict(spec.capture_kwargs)


@torch.no_grad()
def capture_block_inputs(model: nn.Module, spec: ArchSpec, batches: list[torch.Tensor], device: torch.device) -> BlockInputs:
    """Run the model once per batch with catchers in place of the blocks (cheap: stem + head)."""
    blocks = get_module(model, spec.blocks)
    n = len(blocks)
    hidden: list[torch.Tensor] = []
    layer_args: list[list] = [[] for _ in range(n)]
    catchers = [_Catcher(layer_args[i], hidden if i == 0 else None) for i in range(n)]
    set_module(model, spec.blocks, nn.Sequential(*catchers) if isinstance(blocks, nn.Sequential) else type(blocks)(catchers))
    try:
        for batch in batches:
            args, kwargs = model_inputs(spec, batch.to(device))
            model(*args, **kwargs)
    finally:
        set_module(model, spec.blocks, blocks)
    return BlockInputs(hidden=hidden, layer_args=layer_args)


def run_block(block: nn.Module, x: torch.Tensor, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    out = block(x, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def wrap_block(block: nn.Module, spec: ArchSpec, config: QuantConfig) -> list[list[tuple[str, QuantLinear]]]:
    """Replace the block's Linears by QuantLinears (sharing weights); returns the groups.

    Raises a :class:`UserError` if a Linear of the block is in no group, so nothing is ever
    skipped silently.
    """
    groups = spec.group_members(block)
    covered = {name for group in groups for name in group}
    linears = {n for n, m in block.named_modules() if isinstance(m, (nn.Linear, QuantLinear))}
    stray = sorted(linears - covered)
    if stray:
        raise UserError(f"{spec.name}: Linear {stray[0]} is in no quantization group; refusing to skip it")
    out = []
    for group in groups:
        members = []
        for name in group:
            module = block.get_submodule(name)
            if not isinstance(module, QuantLinear):
                module = QuantLinear.from_linear(module)
                set_module(block, name, module)
            module.set_activation_quant(config.a_bits, config.a_sym, config.a_clip_ratio)
            members.append((name, module))
        out.append(members)
    return out


@contextmanager
def _observe(module: QuantLinear, fn: Callable[[torch.Tensor], None], stop: bool) -> Iterator[None]:
    """Call ``fn(effective_input)`` on every forward of ``module`` (after its input quantizer)."""

    def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        fn(out)
        if stop:
            raise _StopForward

    handle = module.input_quant.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _set_act_quant(groups: list[list[tuple[str, QuantLinear]]], enabled: bool) -> None:
    for group in groups:
        for _, module in group:
            module.input_quant.enabled = enabled


@dataclass
class _Replay:
    """A submodule replayed as ``linear(cached input)`` once that input is final (ArchSpec.replay)."""

    sub: nn.Module
    linear: QuantLinear
    returns_tuple: bool
    group: int  # the linear's group: its input is cached during that group's pass
    inputs: list[torch.Tensor] = field(default_factory=list)


@contextmanager
def _replaying(replays: list[_Replay], batch: list[int], device: torch.device) -> Iterator[None]:
    """Swap each submodule's forward for ``linear(cached input of the current batch)``.

    Exact: the linear's input depends only on earlier groups, which are final, and the
    linear itself runs as usual (current weights, activation quantizer).
    """
    for r in replays:
        def forward(*_args: Any, r: _Replay = r, **_kwargs: Any) -> Any:
            out = r.linear(r.inputs[batch[0]].to(device))
            return (out, None) if r.returns_tuple else out

        r.sub.forward = forward  # instance attribute shadows the class method
    try:
        yield
    finally:
        for r in replays:
            del r.sub.forward


@contextmanager
def _recording(replays: list[_Replay], cache_device: torch.device) -> Iterator[None]:
    """Cache the raw input of each replay linear, batch by batch."""
    handles = [r.linear.register_forward_pre_hook(
        lambda _m, args, r=r: r.inputs.append(args[0].to(cache_device))) for r in replays]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class BlockWalker:
    """Calibrates one block at a time; see the module docstring for the procedure."""

    def __init__(self, model: nn.Module, spec: ArchSpec, config: QuantConfig, inputs: BlockInputs,
                 device: torch.device, offload: bool) -> None:
        self.model, self.spec, self.config = model, spec, config
        self.inputs, self.device, self.offload = inputs, device, offload
        self.cache_device = torch.device("cpu") if offload else device
        self.asym = config.method == "gptaq" and config.alpha > 0
        # GPTAQ: activations quantized while calibrating (A→W); GPTQ: only afterwards (W→A).
        self.act_during_calibration = config.method == "gptaq"

    @torch.no_grad()
    def process(self, index: int, state: WalkerState) -> list[tuple[str, SolveResult]]:
        """Quantize block ``index``; advances ``state`` in place and returns its results."""
        block = get_module(self.model, self.spec.blocks)[index]
        home = next(block.parameters()).device
        block.to(self.device)
        groups = wrap_block(block, self.spec, self.config)
        results: list[tuple[str, SolveResult]] = []
        if self.config.method == "rtn":
            for g, group in enumerate(groups):
                for name, module in group:
                    results.append(self._solve(index, g, name, module, None, state.logs))
            if state.x_q is not None:  # RTN with data only to keep streams (activation quant studies)
                state.x_q = self._forward_all(block, index, state.x_q)
        else:
            fp_inputs = self._fp_pass(block, index, groups, state) if self.asym else None
            _set_act_quant(groups, self.act_during_calibration)
            replays = self._replay_plan(block, groups)
            for g, group in enumerate(groups):
                with _recording([r for r in replays if r.group == g], self.cache_device):
                    acc = self._accumulate(block, index, group[0][1], state.x_q, fp_inputs[g] if fp_inputs else None,
                                           [r for r in replays if r.group < g])
                for name, module in group:
                    results.append(self._solve(index, g, name, module, acc, state.logs))
                del acc
            state.x_q = self._forward_all(block, index, state.x_q, replays)
        _set_act_quant(groups, self.act_during_calibration or self.config.method == "rtn")
        block.to(home)
        state.next_block = index + 1
        return results

    def _batch_args(self, index: int, k: int) -> tuple[tuple, dict[str, Any]]:
        return self.inputs.layer_args[index][k]

    def _forward_all(self, block: nn.Module, index: int, xs: list[torch.Tensor],
                     replays: list[_Replay] = ()) -> list[torch.Tensor]:
        out = []
        batch = [0]
        with _replaying(list(replays), batch, self.device):
            for k, x in enumerate(xs):
                batch[0] = k
                args, kwargs = self._batch_args(index, k)
                out.append(run_block(block, x.to(self.device), args, kwargs).to(self.cache_device))
        return out

    def _replay_plan(self, block: nn.Module, groups) -> list[_Replay]:
        """Replays that apply to this block (spec entries whose modules it has)."""
        first = {group[0][0]: g for g, group in enumerate(groups)}
        plan = []
        for sub, linear, returns_tuple in self.spec.replay:
            if linear in first:
                plan.append(_Replay(block.get_submodule(sub), block.get_submodule(linear), returns_tuple, first[linear]))
        return plan

    def _fp_pass(self, block: nn.Module, index: int, groups, state: WalkerState) -> list[list[torch.Tensor]]:
        """Run the FP stream (activation quant off); cache each group's input; advance ``x_fp``."""
        _set_act_quant(groups, False)
        cache: list[list[torch.Tensor]] = [[] for _ in groups]
        with ExitStack() as stack:
            for g, group in enumerate(groups):
                stack.enter_context(_observe(group[0][1], lambda x, g=g: cache[g].append(x.to(self.cache_device)), stop=False))
            state.x_fp = self._forward_all(block, index, state.x_fp)
        return cache

    def _accumulate(self, block: nn.Module, index: int, first: QuantLinear, xs: list[torch.Tensor],
                    fp_cache: list[torch.Tensor] | None, replays: list[_Replay]) -> HessianAccumulator:
        """Run the quantized stream up to ``first``'s input over all batches; return H (and dXXT)."""
        acc = HessianAccumulator(first.in_features, asym=fp_cache is not None, device=self.device)
        batch = [0]
        add = (lambda x: acc.add(x, fp_cache[batch[0]].to(self.device))) if fp_cache is not None else acc.add
        with _observe(first, add, stop=True), _replaying(replays, batch, self.device):
            for k, x in enumerate(xs):
                batch[0] = k
                args, kwargs = self._batch_args(index, k)
                try:
                    run_block(block, x.to(self.device), args, kwargs)
                except _StopForward:
                    pass
        return acc

    def _solve(self, index: int, g: int, name: str, module: QuantLinear, acc: HessianAccumulator | None,
               logs: list[LayerLog], head: bool = False, grid: tuple[int, int] | None = None) -> tuple[str, SolveResult]:
        full = name if head else f"{self.spec.blocks}.{index}.{name}"
        c = self.config
        bits, group_size = grid or c.grid(head)
        start = time.perf_counter()
        try:
            if acc is None:
                result = rtn(module.weight, bits=bits, group_size=group_size, sym=c.sym, mse_clip=c.mse_clip)
            else:
                result = solve(module.weight, acc.H, bits=bits, group_size=group_size, sym=c.sym,
                               damp=c.damp, block_size=c.block_size, reorder=c.reorder,
                               mse_clip=c.mse_clip, dXXT=acc.dXXT, alpha=c.alpha)
        except NumericalError as exc:
            raise exc.with_layer(full) from None
        module.set_quantized(result, bits, group_size, c.sym)
        seconds = time.perf_counter() - start
        logs.append(LayerLog(full, index, g, tuple(module.weight.shape), float(result.loss.sum()), seconds, result.damp))
        return name, result

    @torch.no_grad()
    def process_head(self, state: WalkerState) -> None:
        """Quantize the LM head on the final-norm outputs of the streams (after the last block).

        The head is untied from the embedding first when they share a weight (the embedding
        stays exact), and cut into INT8 and INT4 rows with ``head_int8_rows``. ``H`` comes from
        ``norm(X_q)`` and, for GPTAQ, ``dXXT`` from ``norm(X_fp)``; RTN needs neither. Both
        are input-side, so every part of a split head is solved on the same accumulator (the
        solver treats rows independently: a split solve equals one solve with per-row grids).
        The head gets no activation quantizer.
        """
        parts = head_parts(self.model, self.spec, self.config)
        index = len(get_module(self.model, self.spec.blocks))
        norm = get_module(self.model, self.spec.final_norm)
        acc = None
        if state.x_q is not None and self.config.method != "rtn":
            norm_home = next(norm.parameters(), parts[0][1].weight).device
            norm.to(self.device)
            acc = HessianAccumulator(parts[0][1].in_features, asym=state.x_fp is not None, device=self.device)
            for k, x in enumerate(state.x_q):
                x_fp = norm(state.x_fp[k].to(self.device)) if state.x_fp is not None else None
                acc.add(norm(x.to(self.device)), x_fp)
            norm.to(norm_home)
        for name, module, grid in parts:
            home = module.weight.device
            module.to(self.device)
            self._solve(index, -1, name, module, acc, state.logs, head=True, grid=grid)
            module.to(home)


def untie_head(model: nn.Module, spec: ArchSpec) -> QuantLinear:
    """Make the LM head a :class:`QuantLinear` with a weight of its own; returns it.

    A head tied to the embedding gets a copy of the weight (:func:`quantize.arch.untie_head`),
    so a quantized head never changes the embedding.
    """
    arch_untie_head(model, spec)
    head = get_module(model, spec.head)
    if not isinstance(head, QuantLinear):
        head = QuantLinear.from_linear(head)
        set_module(model, spec.head, head)
    return head


def head_parts(model: nn.Module, spec: ArchSpec, config: QuantConfig) -> list[tuple[str, QuantLinear, tuple[int, int]]]:
    """The LM head's Linears to quantize, each with its module path and ``(bits, group_size)``.

    One untied :class:`QuantLinear` at ``spec.head``, or with ``config.head_int8_rows`` a
    :class:`RowSplitLinear` installed there whose ``parts.0`` (INT8 per channel) holds the first
    ``head_int8_rows`` rows and ``parts.1`` the rest.
    """
    head = untie_head(model, spec)
    grids = config.head_modules(spec.head)
    if not config.head_int8_rows:
        return [(spec.head, head, grids[spec.head])]
    rows = config.head_int8_rows
    if rows >= head.out_features:
        raise UserError(f"head_int8_rows={rows} leaves no INT4 rows: the head has {head.out_features} output rows")
    split = RowSplitLinear.from_linear(head, [rows])
    set_module(model, spec.head, split)
    return [(name, part, grid) for (name, grid), part in zip(grids.items(), split.parts)]


def _restore(model: nn.Module, spec: ArchSpec, config: QuantConfig, store, saved: dict[str, Any],
             state: WalkerState, cache_device: torch.device) -> None:
    """Reinstall the finished blocks' results and the saved streams (bit-exact)."""
    blocks = get_module(model, spec.blocks)
    for index in range(saved["next_block"]):
        groups = wrap_block(blocks[index], spec, config)
        results = store.load_block(index, next(blocks[index].parameters()).dtype)
        for group in groups:
            for name, module in group:
                module.set_quantized(results[name], config.w_bits, config.group_size, config.sym)
        _set_act_quant(groups, config.method != "gptq")
    if saved["next_block"] and state.x_q is not None:
        state.x_q, state.x_fp = store.load_streams(cache_device)
    state.logs = [LayerLog.from_dict(d) for d in saved["logs"]]
    state.next_block = saved["next_block"]
    log.info("resuming after block %d of %d", state.next_block - 1, len(blocks))


def calibrate_model(
    model: nn.Module,
    spec: ArchSpec,
    config: QuantConfig,
    batches: list[torch.Tensor] | None,
    *,
    device: torch.device,
    offload: bool = False,
    store=None,
    progress: bool = True,
) -> list[LayerLog]:
    """Quantize every block of ``model`` in place; returns the per-layer log.

    Args:
        batches: calibration batches (token ids ``[b, seq]`` or pixels ``[b, 3, H, W]``);
            ``None`` for RTN, which needs no data.
        store: a :class:`~quantize.resume.ResumeStore` or ``None``.
    """
    from tqdm.auto import tqdm

    blocks = get_module(model, spec.blocks)
    state = WalkerState(0, x_q=None, x_fp=None)  # type: ignore[arg-type]
    inputs = capture_block_inputs(model, spec, batches, device) if batches is not None else None
    walker = BlockWalker(model, spec, config, inputs, device, offload)
    if inputs is not None:
        state.x_q = [h.to(walker.cache_device) for h in inputs.hidden]
        state.x_fp = list(state.x_q) if walker.asym else None
    saved = store.load_state() if store is not None else None
    if saved:
        _restore(model, spec, config, store, saved, state, walker.cache_device)
    bar = tqdm(total=len(blocks), initial=state.next_block, disable=not progress, desc=f"{config.method} w{config.w_bits}", unit="block")
    for index in range(state.next_block, len(blocks)):
        results = walker.process(index, state)
        if store is not None:
            store.save_block(index, results)
            store.save_progress(state.next_block, state.x_q or [], state.x_fp, [l.to_dict() for l in state.logs])
        block_logs = [l for l in state.logs if l.block == index]
        bar.set_postfix(loss=f"{sum(l.loss for l in block_logs) / max(len(block_logs), 1):.4g}")
        bar.update()
    bar.close()
    if config.quantizes_head:
        walker.process_head(state)
    if config.method == "gptq":  # W→A: activation quantization joins once all weights are set
        for module in blocks.modules():
            if isinstance(module, QuantLinear):
                module.input_quant.enabled = True
    return state.logs
