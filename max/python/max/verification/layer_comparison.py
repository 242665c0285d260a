"""Finding where two implementations part: per-layer and per-sub-module outputs.

Both models run the same prompt once. Forward hooks record the output of every module of
ours whose name also exists in the reference model (`model.<name>` in transformers): the
embedding, each decoder layer and its sub-modules (norms, attention and its projections,
MLP), and the final norm. Our fused projections (qkv_proj, gate_up_proj) are split back
into the reference's q/k/v and gate/up outputs. Outputs are compared in the order our model produced them; the
first module whose relative error exceeds the threshold is where the bug most likely is.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from max.nn.checkpoint_layout import Concat
from max.testing.engine_probes import prompt_logits
from max.verification.frameworks import FrameworkSettings, build_max_engine, load_torch_model


@dataclass
class ModuleDiff:
    """How far one module's outputs are apart."""

    name: str
    max_abs: float
    rel_err: float
    shape: tuple[int, ...]


@dataclass
class LayerReport:
    """Every compared module in execution order, and the first divergent one."""

    modules: list[ModuleDiff]
    threshold: float
    skipped: list[str]

    @property
    def first_divergence(self) -> ModuleDiff | None:
        return next((m for m in self.modules if m.rel_err > self.threshold), None)

    def format(self) -> str:
        """A human-readable report."""
        lines = [f"{'module':<44} {'max |diff|':>12} {'rel err':>10}"]
        first = self.first_divergence
        for m in self.modules:
            flag = "  <-- first divergence" if first is not None and m.name == first.name else ""
            lines.append(f"{m.name:<44} {m.max_abs:>12.3e} {m.rel_err:>10.3e}{flag}")
        if self.skipped:
            lines.append(f"(not compared, shapes differ: {', '.join(self.skipped[:6])})")
        if first is None:
            lines.append(f"All {len(self.modules)} modules agree within relative error {self.threshold:g}.")
        else:
            layer = first.name.split(".")[1] if first.name.startswith("layers.") else None
            where = f"decoder layer {layer}, sub-module {first.name}" if layer is not None else first.name
            lines.append(f"First divergence: {where} (relative error {first.rel_err:.3e} > {self.threshold:g})")
        return "\n".join(lines)


def _first_tensor(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _record(
    module: nn.Module,
    names: Sequence[str],
    store: dict,
    order: list | None = None,
    fused: dict[str, list[tuple[str, int]]] | None = None,
) -> list:
    """Hooks that store the first tensor each named module outputs; a fused module's output
    (see `_fused_parts`) is stored as the outputs of the parts it joins."""
    handles = []
    modules = dict(module.named_modules())
    fused = fused or {}

    def keep(name: str, tensor: torch.Tensor) -> None:
        if name not in store:
            store[name] = tensor.detach().float().cpu()
            if order is not None:
                order.append(name)

    for name in [*names, *fused]:

        def hook(module, _inputs, output, name=name) -> None:
            if getattr(module, "returns_residual_pair", False):
                output = output[0] + output[1]  # the block's hidden state
            tensor = _first_tensor(output)
            if tensor is None:
                return
            if name in fused:
                parts = fused[name]
                for (part, _), piece in zip(parts, tensor.split([size for _, size in parts], dim=-1)):
                    keep(part, piece)
            else:
                keep(name, tensor)

        handles.append(modules[name].register_forward_hook(hook))
    return handles


def _candidate_names(ours: nn.Module, reference_names: set[str]) -> list[str]:
    names = []
    for name, module in ours.named_modules():
        if not name or "rotary" in name or len(name.split(".")) > 4:
            continue
        if f"model.{name}" in reference_names and not isinstance(module, nn.ModuleList):
            names.append(name)
    return names


def _fused_parts(ours: nn.Module, reference: nn.Module) -> dict[str, list[tuple[str, int]]]:
    """Our fused projections (qkv_proj, gate_up_proj) and the reference modules their
    output is the concatenation of, with each part's width, from the layers' checkpoint
    layouts: `layers.0.self_attn.qkv_proj` -> [(`layers.0.self_attn.q_proj`, 64), ...]."""
    reference_modules = dict(reference.named_modules())
    fused = {}
    for prefix, module in ours.named_modules():
        layout = getattr(module, "checkpoint_layout", None)
        if layout is None:
            continue
        for param, source in layout().items():
            if not (param.endswith(".weight") and isinstance(source, Concat)):
                continue
            if not all(isinstance(p, str) for p in source.parts):
                continue
            parts = [f"{prefix}.{p.removesuffix('.weight')}" for p in source.parts]
            theirs = [reference_modules.get(f"model.{p}") for p in parts]
            if all(isinstance(t, nn.Linear) for t in theirs):
                name = f"{prefix}.{param.removesuffix('.weight')}"
                fused[name] = [(p, t.out_features) for p, t in zip(parts, theirs)]
    return fused


@torch.no_grad()
def compare_layers(
    settings: FrameworkSettings,
    prompt_ids: list[int],
    threshold: float = 1e-3,
    modify_ours: Callable[[nn.Module], None] | None = None,
    reference_model=None,
) -> LayerReport:
    """Runs both frameworks on `prompt_ids` and compares their module outputs.

    `modify_ours` may change our loaded network before the run (tests use it to break a
    layer on purpose).
    """
    engine = build_max_engine(settings)
    network = engine.model.model
    if modify_ours is not None:
        modify_ours(network)
    reference = reference_model if reference_model is not None else load_torch_model(settings)
    reference_names = {n for n, _ in reference.named_modules()}
    names = _candidate_names(network, reference_names)
    fused = _fused_parts(network, reference)

    ours_out: dict[str, torch.Tensor] = {}
    order: list[str] = []
    handles = _record(network, names, ours_out, order, fused)
    try:
        # Logits of every row, so the final norm sees the whole sequence as in the reference.
        prompt_logits(engine, prompt_ids)
    finally:
        for h in handles:
            h.remove()

    ref_out: dict[str, torch.Tensor] = {}
    parts = [p for split in fused.values() for p, _ in split]
    handles = _record(reference, [f"model.{n}" for n in [*names, *parts]], ref_out)
    device = next(reference.parameters()).device
    try:
        reference(torch.tensor([prompt_ids], device=device))
    finally:
        for h in handles:
            h.remove()

    diffs, skipped = [], []
    for name in order:
        a, b = ours_out[name], ref_out.get(f"model.{name}")
        b = _aligned(a, b) if b is not None else None
        if b is None:
            skipped.append(name)
            continue
        max_abs = float((a - b).abs().max())
        rel = max_abs / (float(b.abs().max()) + 1e-12)
        diffs.append(ModuleDiff(name, max_abs, rel, tuple(a.shape)))
    return LayerReport(diffs, threshold, skipped)


def _aligned(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor | None:
    """`theirs` laid out as `ours`, or None when no axis order matches.

    Ours are ragged ([tokens, ...]); the reference has a batch axis and may order axes
    otherwise (e.g. heads before tokens where transformers transposes before a q/k norm).
    Where several axis orders fit (equal sizes), the closest one is taken.
    """
    while theirs.dim() > ours.dim() and theirs.shape[0] == 1:
        theirs = theirs.squeeze(0)
    if theirs.shape == ours.shape:
        return theirs
    if theirs.dim() != ours.dim() or sorted(theirs.shape) != sorted(ours.shape):
        return None
    fits = [
        theirs.permute(order)
        for order in itertools.permutations(range(theirs.dim()))
        if tuple(theirs.shape[i] for i in order) == tuple(ours.shape)
    ]
    return min(fits, key=lambda t: float((t - ours).abs().max()))
