"""Layer groups: the units a compression plan decides on.

A `LayerGroup` is one Torch-Pruning dependency group (layers whose output channels are
coupled: a residual chain, an expand conv with its depthwise conv) together with the
layers whose precision and fusion follow it. The classifier is a group of its own that is
never pruned. Groups are ordered by execution, so the order is stable and meaningful.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .errors import ModelError

log = logging.getLogger(__name__)

GROUP_KINDS: tuple[str, ...] = ("stem", "conv", "depthwise", "residual", "linear")
#: kind one-hot (5), log in/out channels (2), kernel, stride, flops share, params share,
#: depth, prunable, coupled-module count, latency share, latency-share-known flag (11).
GROUP_FEATURE_DIM = len(GROUP_KINDS) + 11
#: group count, log MACs, log params, depthwise/residual/linear fractions, max flops share,
#: flops-share entropy, latency shares known (9).
MODEL_FEATURE_DIM = 9


@dataclass(frozen=True)
class LayerGroup:
    """One decision unit of a model (see module docstring)."""

    index: int
    name: str
    kind: str
    modules: tuple[str, ...]
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    flops_share: float
    params_share: float
    depth: float
    prunable: bool
    min_channels: int = 1
    latency_share: float | None = None
    macs: int = 0
    params: int = 0

    @property
    def cost_share(self) -> float:
        """Share of the original's latency, measured per group where profiled, else its MAC share."""
        return self.latency_share if self.latency_share is not None else self.flops_share

    def features(self) -> np.ndarray:
        """Fixed-length, finite, roughly [0, 1] description of the group."""
        kind = np.zeros(len(GROUP_KINDS), dtype=np.float32)
        kind[GROUP_KINDS.index(self.kind)] = 1.0
        rest = np.array(
            [
                math.log2(max(self.in_channels, 1)) / 12.0,
                math.log2(max(self.out_channels, 1)) / 12.0,
                self.kernel / 7.0,
                self.stride / 2.0,
                self.flops_share,
                self.params_share,
                self.depth,
                float(self.prunable),
                min(len(self.modules), 20) / 20.0,
                self.latency_share if self.latency_share is not None else 0.0,
                float(self.latency_share is not None),
            ],
            dtype=np.float32,
        )
        return np.clip(np.concatenate([kind, rest]), 0.0, 4.0)

    def prune_levels_valid(self, grid: Sequence[float]) -> np.ndarray:
        """Which prune ratios of `grid` leave at least `min_channels` (and are allowed at all)."""
        if not self.prunable:
            return np.array([r == 0.0 for r in grid], dtype=bool)
        return np.array([self.out_channels - math.floor(self.out_channels * r) >= self.min_channels for r in grid], dtype=bool)


def model_features(groups: Sequence[LayerGroup]) -> np.ndarray:
    """Fixed-length summary of the whole model, independent of its depth."""
    n = max(len(groups), 1)
    total_macs = sum(g.macs for g in groups)
    total_params = sum(g.params for g in groups)
    shares = np.array([g.flops_share for g in groups] or [1.0], dtype=np.float64)
    shares = shares[shares > 0]
    entropy = float(-(shares * np.log(shares)).sum() / math.log(n)) if n > 1 and len(shares) else 0.0
    return np.array(
        [
            min(len(groups), 200) / 200.0,
            math.log10(max(total_macs, 1)) / 11.0,
            math.log10(max(total_params, 1)) / 9.0,
            sum(g.kind == "depthwise" for g in groups) / n,
            sum(g.kind == "residual" for g in groups) / n,
            sum(g.kind == "linear" for g in groups) / n,
            float(max((g.flops_share for g in groups), default=0.0)),
            entropy,
            float(all(g.latency_share is not None for g in groups)) if groups else 0.0,
        ],
        dtype=np.float32,
    )


def output_layer(model: nn.Module, example_inputs: torch.Tensor, order: Sequence[str] | None = None) -> str:
    """Name of the Conv/Linear layer whose output is the model's output (never pruned).

    :param order: the model's `execution_order`, when the caller already has it
    """
    order = execution_order(model, example_inputs) if order is None else order
    mods = dict(model.named_modules())
    for name in reversed(order):
        if isinstance(mods[name], (nn.Linear, nn.Conv2d)):
            return name
    raise ModelError("the model has no Conv2d or Linear layer; HAD-MC compresses CNN classifiers")


def execution_order(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Names of leaf modules in the order a forward pass first calls them."""
    order: list[str] = []
    seen: set[str] = set()
    hooks = []
    for name, mod in model.named_modules():
        if name and not any(True for _ in mod.children()):

            def hook(_m, _i, _o, name=name):
                if name not in seen:
                    seen.add(name)
                    order.append(name)

            hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_inputs)
    except Exception as exc:  # a model that cannot run on its own example input
        raise ModelError(f"the model failed on an input of shape {tuple(example_inputs.shape)}: {exc}") from exc
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return order


def _layer_macs(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of every Conv2d / Linear for one forward pass of the example."""
    macs: dict[str, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):

            def conv_hook(m, _i, out, name=name):
                k = m.kernel_size[0] * m.kernel_size[1]
                macs[name] = int(out.numel() // out.shape[0] * (m.in_channels // m.groups) * k)

            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):

            def lin_hook(m, _i, out, name=name):
                macs[name] = int(out.numel() // out.shape[0] * m.in_features)

            hooks.append(mod.register_forward_hook(lin_hook))
    try:
        with torch.no_grad():
            model.eval()(example_inputs[:1])
    finally:
        for h in hooks:
            h.remove()
    return macs


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    except Exception as exc:  # Torch-Pruning raises many kinds for graphs it cannot follow
        raise ModelError(
            f"Torch-Pruning cannot trace this model ({type(exc).__name__}: {exc}); "
            "it has a layer or reshape that structural pruning does not handle."
        ) from exc


def coupled_groups(model: nn.Module, example_inputs: torch.Tensor, ignored: Sequence[str]) -> list[list[str]]:
    """Module names whose output channels Torch-Pruning prunes together, one list per group."""
    dg = dependency_graph(model, example_inputs)
    mods = dict(model.named_modules())
    names = {m: n for n, m in mods.items()}
    ignored_layers = [mods[n] for n in ignored]
    result = []
    for group in dg.get_all_groups(ignored_layers=ignored_layers, root_module_types=[nn.Conv2d, nn.Linear]):
        members = []
        for dep, _ in group:
            mod = dep.target.module
            if dg.is_out_channel_pruning_fn(dep.handler) and isinstance(mod, (nn.Conv2d, nn.Linear)):
                name = names.get(mod)
                if name is not None and name not in members:
                    members.append(name)
        if members:
            result.append(members)
    return result


def layer_groups(model: nn.Module, example_inputs: torch.Tensor, *, min_channels: int = 1) -> list[LayerGroup]:
    """Derive the ordered layer groups of `model` from Torch-Pruning's dependency graph."""
    if example_inputs.dim() != 4:
        raise ModelError(f"example input must be NCHW, got shape {tuple(example_inputs.shape)}")
    example_inputs = example_inputs[:1]
    order = execution_order(model, example_inputs)
    position = {n: i for i, n in enumerate(order)}
    head = output_layer(model, example_inputs, order)
    mods = dict(model.named_modules())
    layer_names = [n for n in order if isinstance(mods[n], (nn.Conv2d, nn.Linear))]
    try:
        members_list = coupled_groups(model, example_inputs, ignored=[head])
    except ModelError as exc:
        # Precision and fusion still apply layer by layer; only pruning is off.
        log.warning("%s Pruning is disabled for this model; every layer is its own unprunable group.", exc)
        members_list = []

    covered = {n for members in members_list for n in members}
    # Layers no prunable group covers (the classifier, anything Torch-Pruning skipped) still
    # get precision/fusion decisions: each forms a group that is never pruned.
    fixed = [[n] for n in layer_names if n not in covered]
    macs = _layer_macs(model, example_inputs)
    total_macs = max(sum(macs.values()), 1)
    params = {n: sum(p.numel() for p in mods[n].parameters()) for n in layer_names}
    total_params = max(sum(p.numel() for p in model.parameters()), 1)
    first = layer_names[0]

    raw = []
    for members, prunable in [(m, True) for m in members_list] + [(m, False) for m in fixed]:
        members = sorted((n for n in members if n in position), key=position.__getitem__)
        if not members:
            continue
        root = mods[members[0]]
        if isinstance(root, nn.Linear):
            kind, in_ch, out_ch, kernel, stride = "linear", root.in_features, root.out_features, 1, 1
        else:
            in_ch, out_ch = root.in_channels, root.out_channels
            kernel, stride = root.kernel_size[0], root.stride[0]
            convs = [mods[n] for n in members if isinstance(mods[n], nn.Conv2d)]
            if first in members:
                kind = "stem"
            elif any(c.groups > 1 and c.groups == c.in_channels for c in convs):
                kind = "depthwise"
            elif len(members) > 1:
                kind = "residual"
            else:
                kind = "conv"
        group_macs = sum(macs.get(n, 0) for n in members)
        group_params = sum(params[n] for n in members)
        raw.append(
            dict(
                name=members[0],
                kind=kind,
                modules=tuple(members),
                in_channels=in_ch,
                out_channels=out_ch,
                kernel=kernel,
                stride=stride,
                flops_share=group_macs / total_macs,
                params_share=group_params / total_params,
                prunable=prunable and members[0] != head,
                min_channels=min_channels,
                macs=group_macs,
                params=group_params,
                _pos=position[members[0]],
            )
        )
    raw.sort(key=lambda r: r["_pos"])
    n_layers = max(len(order) - 1, 1)
    return [LayerGroup(index=i, depth=r.pop("_pos") / n_layers, **r) for i, r in enumerate(raw)]


def module_candidates(node_name: str, known: set[str] | None = None) -> set[str]:
    """Module paths an exporter node name may stand for.

    The TorchScript exporter writes scopes such as `/layer1/layer1.0/conv1/Conv`,
    `/layer2/layer2.0/downsample/downsample.0/Conv` or
    `/features/features.2/conv/conv.0/conv.0.0/Conv`: each part is a path relative to some
    ancestor of the previous part (possibly the root). `known` (dotted prefixes of real
    module names) prunes the candidates at every step; the caller keeps one that names a layer.
    """
    parts = [p for p in node_name.split("/") if p][:-1]
    names = {""}
    for part in parts:
        step = set()
        for name in names:
            pieces = name.split(".") if name else []
            for cut in range(len(pieces) + 1):
                cand = ".".join([*pieces[:cut], part])
                if known is None or cand in known:
                    step.add(cand)
        names = step or names
    return names - {""}


def _prefixes(names) -> set[str]:
    out = set()
    for n in names:
        pieces = n.split(".")
        out.update(".".join(pieces[: i + 1]) for i in range(len(pieces)))
    return out


def nodes_of_groups(node_names: Sequence[str], groups: Sequence[LayerGroup]) -> dict[str, list[str]]:
    """Map each group name to the ONNX nodes that compute its layers."""
    owner = {m: g.name for g in groups for m in g.modules}
    result: dict[str, list[str]] = {g.name: [] for g in groups}
    known = _prefixes(owner)
    for node in node_names:
        hits = module_candidates(node, known) & owner.keys()
        if hits:  # the longest path is the most specific (`layer1.0.conv1` over `conv1`)
            result[owner[max(hits, key=len)]].append(node)
    return result


def node_owners(onnx_bytes: bytes, groups: Sequence[LayerGroup]) -> dict[str, str]:
    """Group of every node of an exported graph, keyed by node name and by output tensor name.

    Conv/Gemm nodes belong to their layer's group; every other node (BN, activation, add,
    pooling) to the group of the node producing its first input, which is where runtimes
    fuse it (ONNX Runtime names a fused Conv+Relu after the Relu's output).
    """
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    direct = {}
    for group, nodes in nodes_of_groups([n.name for n in graph.node], groups).items():
        for node in nodes:
            direct[node] = group
    producer_group: dict[str, str] = {}
    owners: dict[str, str] = {}
    for node in graph.node:  # ONNX graphs are topologically sorted
        group = direct.get(node.name)
        if group is None:
            group = next((producer_group[i] for i in node.input if i in producer_group), None)
        if group is None:
            continue
        owners[node.name] = group
        for out in node.output:
            producer_group[out] = group
            owners[out] = group
    return owners


#: Suffixes ONNX Runtime appends to names of nodes its graph transformers create.
_RUNTIME_SUFFIXES = ("_nchwc", "_kernel_time", "_fence_before", "_fence_after")


#: Key of `group_latency_ms` for time spent in nodes of no group (input casts, the runtime's own nodes).
OTHER = "_other"


def group_latency_ms(groups: Sequence[LayerGroup], node_ms: dict[str, float], onnx_bytes: bytes | None = None) -> dict[str, float]:
    """Milliseconds per group from ONNX Runtime's per-node profile (`OTHER` for the rest).

    With the exported graph (`onnx_bytes`), fused and renamed runtime nodes are traced back
    to the layer that feeds them.
    """
    owners = node_owners(onnx_bytes, groups) if onnx_bytes is not None else {}
    owner = {m: g.name for g in groups for m in g.modules}
    per_group = {g.name: 0.0 for g in groups}
    per_group[OTHER] = 0.0
    known = _prefixes(owner)
    for node, ms in node_ms.items():
        name = node
        for suffix in _RUNTIME_SUFFIXES:
            name = name.removesuffix(suffix)
        group = owners.get(node) or owners.get(name)
        if group is None:
            hits = module_candidates(name, known) & owner.keys()
            group = owner[max(hits, key=len)] if hits else None
        per_group[group if group is not None else OTHER] += ms
    return per_group


def with_latency_shares(groups: Sequence[LayerGroup], node_ms: dict[str, float], onnx_bytes: bytes | None = None) -> list[LayerGroup]:
    """Attach measured latency shares (from ONNX Runtime's per-node profile) to the groups.

    Nodes that belong to no group count in the total, so the shares say which fraction of the
    whole inference each group's layers take.
    """
    total = sum(node_ms.values())
    if total <= 0:
        return list(groups)
    per_group = group_latency_ms(groups, node_ms, onnx_bytes)
    return [replace(g, latency_share=per_group[g.name] / total) for g in groups]
