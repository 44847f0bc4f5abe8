"""Applying a plan, for real, in the order of DESIGN.md section 3.

physical structured pruning (Torch-Pruning) -> knowledge-distilled recovery -> Conv-BN(-act)
folding -> ONNX export (+ onnx.checker) -> ONNX Runtime static INT8 (QDQ, per-channel,
groups left at fp32 excluded node by node) / fp16 conversion -> accuracy of the exported
artifact in ONNX Runtime, bytes, MACs, params.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch_pruning as tp
from torch import nn

from .errors import HadmcError, PipelineError, PlanError
from .groups import LayerGroup, execution_order, layer_groups, nodes_of_groups
from .plan import CompressionPlan

log = logging.getLogger(__name__)

OPSET = 17
#: ONNX Runtime 1.31 reads IR versions up to 13; newer onnx writes 14 by default.
MAX_IR_VERSION = 10
#: Fraction of the model (by execution order, classifier always included) each update scope trains.
SCOPE_FRACTION = {"head": 0.0, "last_stage": 0.25, "half": 0.5, "full": 1.0}
IMPORTANCES = ("l1", "taylor")


@dataclass
class CompressedModel:
    """The result of `apply_plan`: the compressed PyTorch model and its exported artifact."""

    model: nn.Module
    onnx_bytes: bytes
    plan: CompressionPlan
    groups: list[LayerGroup]
    input_shape: tuple[int, ...]
    accuracy: float | None
    macs: int
    params: int
    quantized: bool
    int8_nodes: int = 0
    excluded_nodes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    recovery: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None

    @property
    def model_bytes(self) -> int:
        return len(self.onnx_bytes)

    def save(self, path: str | Path) -> Path:
        """Write the exported ONNX artifact, atomically (never a truncated file)."""
        from .files import write_atomic

        return write_atomic(path, self.onnx_bytes, PipelineError)


# -- measuring the PyTorch model ----------------------------------------------------------


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """MACs of one inference at the example's resolution (batch 1) and parameter count."""
    macs, params = tp.utils.count_ops_and_params(model.eval(), example_inputs[:1])
    return int(macs), int(params)


# -- 1. pruning ---------------------------------------------------------------------------


def prune(
    model: nn.Module,
    plan: CompressionPlan,
    groups: Sequence[LayerGroup],
    example_inputs: torch.Tensor,
    *,
    importance: str = "l1",
    round_to: int | None = None,
    calibration: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
) -> nn.Module:
    """Physically remove output channels of every group, in place, by the plan's ratios.

    :param importance: "l1" (magnitude) or "taylor" (first-order, uses `calibration` batches)
    :param round_to: keep channel counts multiples of this (tensor-core / SIMD alignment)
    """
    if importance not in IMPORTANCES:
        raise PlanError(f"unknown pruning importance {importance!r}; valid: {', '.join(IMPORTANCES)}")
    mods = dict(model.named_modules())
    ratios = {}
    for g in groups:
        r = plan.decision_for(g.name).prune_ratio
        if r > 0 and not g.prunable:
            raise PlanError(
                f"plan.groups.{g.name}.prune_ratio: group {g.name!r} ({g.kind}) cannot be pruned "
                "(the classifier, or a layer Torch-Pruning cannot follow); set 0"
            )
        if r > 0:
            ratios[mods[g.modules[0]]] = r
    if not ratios:
        return model
    ignored = [mods[g.modules[0]] for g in groups if not g.prunable]
    imp = tp.importance.GroupMagnitudeImportance(p=1) if importance == "l1" else tp.importance.GroupTaylorImportance()
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs[:1],
            importance=imp,
            pruning_ratio=0.0,
            pruning_ratio_dict=ratios,
            ignored_layers=ignored,
            round_to=round_to,
            root_module_types=[nn.Conv2d, nn.Linear],
        )
        if importance == "taylor":
            if not calibration:
                raise PlanError("taylor importance needs calibration batches (training data)")
            model.zero_grad()
            model.eval()
            for x, y in calibration:
                nn.functional.cross_entropy(model(x), y).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner.step()
        model.zero_grad(set_to_none=True)
    except HadmcError:
        raise
    except Exception as exc:
        raise PipelineError(f"Torch-Pruning failed on this model ({type(exc).__name__}: {exc})") from exc
    return model


# -- 2. recovery --------------------------------------------------------------------------


def trainable_parameters(model: nn.Module, scope: str, example_inputs: torch.Tensor) -> list[nn.Parameter]:
    """Parameters recovery trains for an update scope: the last fraction of the layers, by execution."""
    if scope not in SCOPE_FRACTION:
        raise PlanError(f"unknown update scope {scope!r}; valid: {', '.join(SCOPE_FRACTION)}")
    if scope == "full":
        return [p for p in model.parameters() if p.requires_grad]
    mods = dict(model.named_modules())
    order = [n for n in execution_order(model, example_inputs[:1]) if any(True for _ in mods[n].parameters(recurse=False))]
    keep = max(1, round(len(order) * SCOPE_FRACTION[scope]))  # "head" (0.0) keeps the last layer
    return [p for n in order[-keep:] for p in mods[n].parameters(recurse=False)]


class _Indexed(torch.utils.data.Dataset):
    """(image, label, index): lets a `TeacherLogits` cache look images up by index."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i][:2]
        return x, y, i


class TeacherLogits:
    """The teacher's logits per training image, computed the first time an image is used and
    kept for every later recovery of the run: the teacher's forward pass (half or more of a
    distillation step) is paid once per image, not once per step.

    Valid only while the training images are not augmented (the same index always yields the
    same tensor); `DataBundle.train_augmented` says so.

    :param teacher: the original model (run in eval mode, without gradients)
    :param n_images: size of the training split
    """

    def __init__(self, teacher: nn.Module, n_images: int) -> None:
        self.teacher = teacher
        self.values: torch.Tensor | None = None
        self.known = torch.zeros(n_images, dtype=torch.bool)

    @torch.no_grad()
    def __call__(self, indices: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        missing = ~self.known[indices]
        if missing.any():
            on = next(self.teacher.parameters()).device  # the teacher stays where it is; images come to it
            out = self.teacher.eval()(images[missing.to(images.device)].to(on)).float().cpu()
            if self.values is None:
                self.values = torch.empty(len(self.known), out.shape[1])
            self.values[indices[missing]] = out
            self.known[indices[missing]] = True
        return self.values[indices]

    @property
    def computed(self) -> int:
        """Images whose logits are known."""
        return int(self.known.sum())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Sequence[torch.Tensor]) -> int:
    """Re-estimate BatchNorm running statistics by forward passes (cumulative average over
    `batches`); returns the number of BatchNorm layers reset.

    Pruning changes what each BN layer sees and a short recovery leaves the running averages
    of the pre-pruning network mixed in; measured on the embedded default, heavily pruned plans
    read chance accuracy after one recovery epoch without this and 47-96% with it.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or not batches:
        return 0
    saved = [(m, m.momentum) for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    model.eval()
    return len(norms)


def recalibration_batches(data, n_images: int = 256, batch_size: int = 64) -> list[torch.Tensor]:
    """A fixed, seeded sample of training images for `recalibrate_batchnorm`."""
    return [torch.from_numpy(b) for b in data.calibration_batches(n_batches=max(1, n_images // batch_size), batch_size=batch_size)]


def recovery_steps(plan: CompressionPlan, data, batch_size: int, max_train_batches: int | None = None) -> int:
    """Optimizer steps of the plan's full recovery budget (epochs x batches per epoch)."""
    per_epoch = math.ceil(len(data.train) / batch_size)
    if max_train_batches:
        per_epoch = min(per_epoch, max_train_batches)
    return plan.update.budget * per_epoch


def recover(
    student: nn.Module,
    teacher: nn.Module,
    plan: CompressionPlan,
    data,
    *,
    lr: float = 0.01,
    batch_size: int = 64,
    max_train_batches: int | None = None,
    max_steps: int | None = None,
    logits: TeacherLogits | None = None,
    bn_recalibration: bool = False,
    refresh_frozen_norms: bool = True,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Knowledge-distilled fine-tuning: `(1-alpha)*CE + alpha*T^2*KL(teacher || student)` (Hinton et al.).

    :param max_train_batches: cap on batches per epoch (quick runs and tests)
    :param max_steps: cap on optimizer steps over the whole budget (a search fidelity below
        the plan's own budget); the learning-rate schedule spans the steps actually run
    :param logits: a `TeacherLogits` cache of the run, so the teacher runs once per image
    :param bn_recalibration: re-estimate BatchNorm statistics after training (or, without
        training, right away: training in train mode uses batch statistics, so estimating them
        before it would be wasted for the layers that train)
    :param refresh_frozen_norms: when the plan pruned something and its update scope freezes
        part of the model, re-estimate BatchNorm statistics before training. The frozen part's
        BatchNorm layers run in eval mode throughout, on the running statistics of the network
        before pruning, which no longer describe what they see; the layers that train then
        learn around those stale features. On the embedded default a half-scope plan pruned
        10-90% per group read 48-55% after 15, 30 and 45 of its 60 steps and 96% after all 60
        without this (see ``hadmc.evaluation``)
    :param device: the torch device the student trains on (``config.resolve_train_device``); it
        comes back to the CPU afterwards, and the teacher stays on the CPU (a logit cache takes
        images to it; without one, a copy trains alongside)
    """
    from .training import train_classifier

    full = recovery_steps(plan, data, batch_size, max_train_batches)
    steps = full if max_steps is None else min(full, max_steps)
    recal = recalibration_batches(data, batch_size=batch_size) if bn_recalibration else []
    if steps == 0:
        t = time.perf_counter()
        if recal:
            recalibrate_batchnorm(student, recal)
        return {"epochs": 0, "steps": 0, "full_steps": full, "seconds": time.perf_counter() - t, "bn_recalibrated": bool(recal)}
    params = trainable_parameters(student, plan.update.scope, data.example_input())
    if refresh_frozen_norms and plan.update.scope != "full" and any(d.prune_ratio > 0 for d in (plan.default, *plan.groups.values())):
        recalibrate_batchnorm(student, recal or recalibration_batches(data, batch_size=batch_size))
    dataset = data.split("train") if logits is None else _Indexed(data.split("train"))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(data.seed)
    )
    per_epoch = len(loader) if not max_train_batches else min(len(loader), max_train_batches)
    on_gpu = torch.device(device).type != "cpu"
    if on_gpu:
        student.to(device)
        if logits is None:
            teacher = copy.deepcopy(teacher).to(device)
    try:
        result = train_classifier(
            student,
            loader,
            epochs=math.ceil(steps / per_epoch),
            lr=lr,
            teacher=teacher.eval() if logits is None else logits,
            temperature=plan.distill.temperature,
            alpha=plan.distill.alpha,
            params=params,
            max_steps=steps,
            max_batches_per_epoch=max_train_batches,
            seed=seed,
            progress=progress,
        )
    finally:
        if on_gpu:
            student.to("cpu")
    if recal:
        recalibrate_batchnorm(student, recal)
    student.eval()
    return {"epochs": plan.update.budget, "full_steps": full, "bn_recalibrated": bool(recal), "device": str(device), **result}


# -- 3. folding ---------------------------------------------------------------------------


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where the BN consumes the conv's output and nothing else does."""
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(model)
    except Exception:
        log.info("model is not fx-traceable; Conv-BN folding left to the runtime")
        return []
    mods = dict(model.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and isinstance(mods.get(src.target), nn.Conv2d)
            and len(src.users) == 1
        ):
            pairs.append((src.target, node.target))
    return pairs


def fold_batchnorm(model: nn.Module, plan: CompressionPlan, groups: Sequence[LayerGroup], example_inputs: torch.Tensor) -> int:
    """Fold BN into the preceding conv for groups whose fusion is not `none`; returns the count.

    Activation fusion (`conv_bn_act`) is done by the runtime's kernels (ORT FusedConv /
    QLinearConv with ReLU, TensorRT); `none` keeps BatchNormalization as its own op, which
    runtimes without graph fusion (some edge runtimes) then execute separately.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    owner = {m: g.name for g in groups for m in g.modules}
    model.eval()
    count = 0
    for conv_name, bn_name in _conv_bn_pairs(model):
        group = owner.get(conv_name)
        if group is None or plan.decision_for(group).fusion == "none":
            continue
        parent_c, _, attr_c = conv_name.rpartition(".")
        parent_b, _, attr_b = bn_name.rpartition(".")
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        setattr(model.get_submodule(parent_c) if parent_c else model, attr_c, fuse_conv_bn_eval(conv, bn))
        setattr(model.get_submodule(parent_b) if parent_b else model, attr_b, nn.Identity())
        count += 1
    return count


# -- 4. export ----------------------------------------------------------------------------


def export_onnx(model: nn.Module, example_inputs: torch.Tensor, *, keep_batchnorm: bool = False) -> bytes:
    """Export to ONNX (TorchScript exporter, dynamic batch), check it, return the bytes.

    :param keep_batchnorm: export BatchNormalization as its own op instead of letting the
        exporter fold it into the convolution (the `none` fusion decision)
    """
    buf = io.BytesIO()
    model = model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example_inputs[:1],),
                buf,
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                do_constant_folding=True,
                training=torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL,
            )
    except Exception as exc:
        raise PipelineError(f"ONNX export failed ({type(exc).__name__}: {exc})") from exc
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise PipelineError(f"exported ONNX graph is invalid: {exc}") from exc
    return proto.SerializeToString()


# -- 5. quantization ----------------------------------------------------------------------


class _CalibrationReader:
    """ONNX Runtime CalibrationDataReader over fixed NCHW batches."""

    def __init__(self, batches: Sequence[np.ndarray], input_name: str):
        self._it = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self._it, None)


@dataclass(frozen=True)
class QuantRecipe:
    """How ONNX Runtime static INT8 quantization is run for a target (recorded with each evaluation).

    :param activation: activation type (``QUInt8`` or ``QInt8``)
    :param weight: weight type
    :param reduce_range: weights use 7 bits; x86 CPUs without VNNI saturate in ONNX Runtime's
        U8S8 kernels otherwise (measured: 4.8 points lost on a test fixture, none with it)
    :param per_channel: per-output-channel weight scales
    :param format: ``QDQ`` (QuantizeLinear/DequantizeLinear pairs the runtime fuses)
    """

    activation: str
    weight: str
    reduce_range: bool
    per_channel: bool = True
    format: str = "QDQ"

    def as_dict(self) -> dict[str, Any]:
        return {
            "activation": self.activation,
            "weight": self.weight,
            "reduce_range": self.reduce_range,
            "per_channel": self.per_channel,
            "format": self.format,
            "name": ("S8S8" if self.activation == "QInt8" else "U8S8") + ("+reduce_range" if self.reduce_range else ""),
        }


def quantization_recipe(device_spec=None) -> QuantRecipe:
    """The INT8 recipe for a target: S8S8 on GPUs/TensorRT; U8S8 on x86 CPUs, with 7-bit
    weights (``reduce_range``) where the CPU lacks VNNI, as ONNX Runtime's documentation
    advises. ``None`` means this machine (its ISA is detected)."""
    if device_spec is None:
        from .hal import detect_local

        device_spec = detect_local()
    kind = getattr(device_spec, "kind", "cpu")
    if kind in ("gpu", "edge-gpu"):
        return QuantRecipe("QInt8", "QInt8", reduce_range=False)
    return QuantRecipe("QUInt8", "QInt8", reduce_range=not bool(getattr(device_spec, "vnni", False)))


def quantize_int8(
    onnx_bytes: bytes,
    int8_groups: set[str],
    groups: Sequence[LayerGroup],
    calibration: Sequence[np.ndarray],
    *,
    device_spec=None,
    recipe: QuantRecipe | None = None,
) -> tuple[bytes, int, list[str]]:
    """Static INT8 QDQ quantization of the nodes of `int8_groups`; all other nodes stay float.

    :param recipe: the quantization recipe (default: `quantization_recipe(device_spec)`)
    Returns (bytes, number of QuantizeLinear nodes, excluded node names).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    recipe = recipe or quantization_recipe(device_spec)
    act, wt = recipe.activation, recipe.weight
    with tempfile.TemporaryDirectory(prefix="hadmc-q-") as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(onnx_bytes)
        try:
            # Without pre-processing (shape inference + BN folding) INT8 ran slower than fp32 here.
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        except Exception as exc:
            log.warning("quant_pre_process failed (%s); quantizing the raw export", exc)
            pre.write_bytes(onnx_bytes)
        model = onnx.load(str(pre))
        node_names = [n.name for n in model.graph.node]
        by_group = nodes_of_groups(node_names, groups)
        keep_float = sorted(n for g, nodes in by_group.items() if g not in int8_groups for n in nodes)
        try:
            quantize_static(
                str(pre),
                str(out),
                _CalibrationReader(calibration, model.graph.input[0].name),
                quant_format=QuantFormat.QDQ,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                activation_type=getattr(QuantType, act),
                weight_type=getattr(QuantType, wt),
                nodes_to_exclude=keep_float,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": act == "QInt8"},
            )
        except Exception as exc:
            raise PipelineError(f"ONNX Runtime static quantization failed ({type(exc).__name__}: {exc})") from exc
        qmodel = onnx.load(str(out))
    qmodel.ir_version = min(qmodel.ir_version, MAX_IR_VERSION)
    n_q = sum(n.op_type == "QuantizeLinear" for n in qmodel.graph.node)
    return qmodel.SerializeToString(), n_q, keep_float


def _unshare_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace `Identity(initializer)` nodes (the exporter's de-duplication of equal tensors)
    with copies of the initializer, so each layer owns its weights and a layer converted to
    fp16 never shares a tensor with one kept at fp32."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            copy_ = onnx.TensorProto()
            copy_.CopyFrom(inits[node.input[0]])
            copy_.name = node.output[0]
            graph.initializer.append(copy_)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return model


def convert_fp16(onnx_bytes: bytes, fp16_groups: set[str], groups: Sequence[LayerGroup]) -> bytes:
    """Convert the nodes of `fp16_groups` to float16 (inputs/outputs stay float32)."""
    from onnxruntime.transformers import float16  # ships with onnxruntime

    model = _unshare_initializers(onnx.load_from_string(onnx_bytes))
    by_group = nodes_of_groups([n.name for n in model.graph.node], groups)
    fp16_nodes = {n for g in fp16_groups for n in by_group.get(g, [])}
    block = [n.name for n in model.graph.node if n.name not in fp16_nodes]
    try:
        converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=block)
    except Exception as exc:
        raise PipelineError(f"fp16 conversion failed ({type(exc).__name__}: {exc})") from exc
    converted = _drop_repeated_nodes(converted)
    converted.ir_version = min(converted.ir_version, MAX_IR_VERSION)
    return converted.SerializeToString()


def _drop_repeated_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Keep one of each node repeated exactly (and one value_info per name).

    The float16 converter of ONNX Runtime before 1.32 adds one Cast back to float32 per
    consumer of a float16 tensor, each with the same name and output: a tensor that feeds two
    float32 nodes (a residual branch) then has two producers, and ONNX Runtime refuses the
    model ("two nodes with same node name"). The copies are identical, so one is kept.
    """
    graph = model.graph
    seen: set[bytes] = set()
    keep = []
    for node in graph.node:
        sig = node.SerializeToString(deterministic=True)
        if sig not in seen:
            seen.add(sig)
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    names: set[str] = set()
    infos = []
    for vi in graph.value_info:
        if vi.name not in names:
            names.add(vi.name)
            infos.append(vi)
    if len(infos) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(infos)
    return model


# -- 6. accuracy of the artifact ----------------------------------------------------------


def ort_session(onnx_bytes: bytes, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def onnx_accuracy(onnx_bytes_or_session, loader, *, run: Callable[[np.ndarray], np.ndarray] | None = None) -> float:
    """Top-1 accuracy of an exported artifact over a loader, run in ONNX Runtime (or `run`)."""
    if run is None:
        sess = ort_session(onnx_bytes_or_session) if isinstance(onnx_bytes_or_session, bytes) else onnx_bytes_or_session
        name = sess.get_inputs()[0].name

        def run(batch: np.ndarray) -> np.ndarray:
            return sess.run(None, {name: batch})[0]

    correct = total = 0
    for x, y in loader:
        logits = run(x.numpy().astype(np.float32))
        correct += int((np.asarray(logits).argmax(axis=1) == y.numpy()).sum())
        total += len(y)
    if total == 0:
        raise PipelineError("the test split is empty; cannot measure accuracy")
    return correct / total


# -- the whole pipeline -------------------------------------------------------------------


def resolve_plan(plan: CompressionPlan, groups: Sequence[LayerGroup]) -> CompressionPlan:
    """Spell the plan out per group. The default prune ratio applies to prunable groups only
    (the classifier keeps its outputs); naming a non-prunable group with a ratio is an error."""
    resolved = plan.resolve([g.name for g in groups])
    if plan.default.prune_ratio > 0 and not any(g.prunable for g in groups):
        raise PlanError(
            "plan.default.prune_ratio: this model has no prunable layer groups (Torch-Pruning cannot "
            "trace it); set it to 0 and compress with precision and fusion only"
        )
    fixed = {}
    for g in groups:
        d = resolved.groups[g.name]
        if not g.prunable and d.prune_ratio > 0:
            if g.name in plan.groups:
                raise PlanError(
                    f"plan.groups.{g.name}.prune_ratio: group {g.name!r} ({g.kind}) cannot be pruned "
                    "(the classifier, or a layer Torch-Pruning cannot follow); set 0"
                )
            d = d.model_copy(update={"prune_ratio": 0.0})
        fixed[g.name] = d
    return resolved.model_copy(update={"groups": fixed})



def pruned_copy(
    model: nn.Module,
    plan: CompressionPlan,
    groups: Sequence[LayerGroup],
    data,
    *,
    importance: str = "l1",
    round_to: int | None = None,
) -> nn.Module:
    """A pruned copy of `model` (the original is untouched); checks the result still runs."""
    example = data.example_input()
    student = copy.deepcopy(model).eval()
    calib_xy = []
    if importance == "taylor":
        loader = data.loader("train", batch_size=32, shuffle=False)
        calib_xy = [b[:2] for _, b in zip(range(4), loader)]
    prune(student, plan, groups, example, importance=importance, round_to=round_to, calibration=calib_xy)
    try:
        with torch.no_grad():
            student.eval()(example)
    except Exception as exc:
        pruned = sorted(n for n, d in plan.groups.items() if d.prune_ratio > 0)
        raise PipelineError(
            f"after pruning groups {pruned[:6]}{' ...' if len(pruned) > 6 else ''} the model no longer runs "
            f"({type(exc).__name__}: {exc}); a layer depends on a fixed channel count (e.g. a hard-coded "
            "reshape): keep prune_ratio 0 for the groups that feed it"
        ) from exc
    return student


@dataclass
class Artifact:
    """An exported (and possibly quantized) ONNX artifact of a student model."""

    onnx_bytes: bytes
    macs: int
    params: int
    int8_nodes: int = 0
    excluded_nodes: list[str] = field(default_factory=list)
    quantization: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)


def export_artifact(
    student: nn.Module,
    plan: CompressionPlan,
    groups: Sequence[LayerGroup],
    data,
    device_spec=None,
    *,
    calibration_batches: int = 8,
) -> Artifact:
    """Fold, export and quantize a copy of `student` by the plan's fusion and precision
    decisions (the student itself is untouched, so one student serves several plans)."""
    example = data.example_input()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    student = copy.deepcopy(student).eval()
    macs, params = count_macs_params(student, example)
    fold_batchnorm(student, plan, groups, example)
    keep_bn = any(d.fusion == "none" for d in plan.groups.values())
    onnx_bytes = export_onnx(student, example, keep_batchnorm=keep_bn)
    timings["export_s"] = time.perf_counter() - t

    int8 = {n for n, d in plan.groups.items() if d.precision == "int8"}
    fp16 = {n for n, d in plan.groups.items() if d.precision == "fp16"}
    n_q, excluded, recipe = 0, [], None
    t = time.perf_counter()
    # fp16 first: the float16 converter cannot follow Q/DQ pairs, while the INT8 quantizer
    # leaves the (excluded) fp16 nodes alone.
    if fp16:
        onnx_bytes = convert_fp16(onnx_bytes, fp16, groups)
    if int8:
        recipe = quantization_recipe(device_spec)
        calib = data.calibration_batches(n_batches=calibration_batches)
        onnx_bytes, n_q, excluded = quantize_int8(onnx_bytes, int8, groups, calib, recipe=recipe)
    timings["quantize_s"] = time.perf_counter() - t
    return Artifact(onnx_bytes, macs, params, n_q, excluded, recipe.as_dict() if recipe else None, timings)


def check_precisions(plan: CompressionPlan, device_spec) -> None:
    """Refuse precisions the target cannot run."""
    supported = set(getattr(device_spec, "precisions", None) or ("fp32", "int8"))
    unsupported = plan.precisions() - supported
    if unsupported:
        raise PlanError(
            f"plan asks for {sorted(unsupported)} but the target supports only {sorted(supported)}; "
            "change the groups' precision"
        )


def artifact_accuracy(
    onnx_bytes: bytes,
    data,
    split: str = "test",
    *,
    batch_size: int = 64,
    max_batches: int | None = None,
    runner: Callable[[bytes], Callable[[np.ndarray], np.ndarray]] | None = None,
) -> float:
    """Top-1 of an exported artifact on one split, run in the target runtime (`runner`) or ONNX Runtime."""
    run = runner(onnx_bytes) if runner else None
    loader = data.loader(split, batch_size=batch_size)
    if max_batches:
        loader = [b for _, b in zip(range(max_batches), loader)]
    return onnx_accuracy(onnx_bytes, loader, run=run)


def apply_plan(
    model: nn.Module,
    plan: CompressionPlan,
    data,
    device_spec=None,
    *,
    teacher: nn.Module | None = None,
    groups: Sequence[LayerGroup] | None = None,
    importance: str = "l1",
    round_to: int | None = None,
    recovery_lr: float = 0.01,
    batch_size: int = 64,
    max_train_batches: int | None = None,
    max_eval_batches: int | None = None,
    calibration_batches: int = 8,
    bn_recalibration: bool = False,
    measure_accuracy: bool = True,
    accuracy_split: str = "test",
    accuracy_runner: Callable[[bytes], Callable[[np.ndarray], np.ndarray]] | None = None,
    seed: int = 0,
    progress: Callable[[str, dict], None] | None = None,
) -> CompressedModel:
    """Apply `plan` to a copy of `model` and export the result; the input model is untouched.

    :param model: the pretrained classifier (also the distillation teacher unless `teacher` is given)
    :param plan: the compression plan; groups it does not name get `plan.default`
    :param data: a `hadmc.data.DataBundle` (train split for recovery and calibration, test for accuracy)
    :param device_spec: the target's DeviceSpec (supported precisions, INT8 recipe); None = this machine
    :param groups: precomputed `layer_groups(model, ...)` (derived when None)
    :param importance: channel importance for pruning: "l1" or "taylor"
    :param round_to: channel-count alignment after pruning
    :param recovery_lr: peak learning rate of KD recovery (one-cycle SGD)
    :param batch_size: batch size of recovery training and accuracy evaluation
    :param max_train_batches: cap on recovery batches per epoch (quick runs and tests)
    :param max_eval_batches: cap on accuracy batches (tests only; reported runs use the whole split)
    :param calibration_batches: training batches used to calibrate INT8 activation ranges
    :param bn_recalibration: re-estimate BatchNorm statistics after pruning and after recovery
    :param measure_accuracy: measure top-1 of the exported artifact
    :param accuracy_split: the split accuracy is measured on (``test``; ``val`` while searching)
    :param accuracy_runner: builds a batch -> logits function for the artifact in the target
        runtime (e.g. a HAL probe's session); default: ONNX Runtime CPU
    :param seed: seed of recovery fine-tuning
    :param progress: called with (stage, info) as stages finish
    """
    timings: dict[str, float] = {}
    say = progress or (lambda stage, info: None)
    groups = list(groups) if groups is not None else layer_groups(model, data.example_input())
    plan = resolve_plan(plan, groups)
    check_precisions(plan, device_spec)

    t = time.perf_counter()
    student = pruned_copy(model, plan, groups, data, importance=importance, round_to=round_to)
    timings["prune_s"] = time.perf_counter() - t
    say("prune", {"seconds": timings["prune_s"]})

    t = time.perf_counter()
    recovery = recover(
        student, teacher or model, plan, data, lr=recovery_lr, batch_size=batch_size,
        max_train_batches=max_train_batches, bn_recalibration=bn_recalibration, seed=seed,
    )  # fmt: skip
    timings["recover_s"] = time.perf_counter() - t
    say("recover", recovery)

    art = export_artifact(student, plan, groups, data, device_spec, calibration_batches=calibration_batches)
    timings.update(art.timings)
    say("export", {"bytes": len(art.onnx_bytes), "int8_nodes": art.int8_nodes})

    accuracy = None
    if measure_accuracy:
        t = time.perf_counter()
        accuracy = artifact_accuracy(
            art.onnx_bytes, data, accuracy_split, batch_size=batch_size, max_batches=max_eval_batches, runner=accuracy_runner
        )
        timings["accuracy_s"] = time.perf_counter() - t
        say("accuracy", {"accuracy": accuracy})

    return CompressedModel(
        model=student,
        onnx_bytes=art.onnx_bytes,
        plan=plan,
        groups=groups,
        input_shape=tuple(data.example_input().shape),
        accuracy=accuracy,
        macs=art.macs,
        params=art.params,
        quantized=art.int8_nodes > 0,
        int8_nodes=art.int8_nodes,
        excluded_nodes=art.excluded_nodes,
        timings=timings,
        recovery=recovery,
        quantization=art.quantization,
    )
