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

    @property
    def model_bytes(self) -> int:
        return len(self.onnx_bytes)

    def save(self, path: str | Path) -> Path:
        """Write the exported ONNX artifact, atomically (never a truncated file)."""
        from .files import atomic_write

        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PipelineError(f"cannot create {path.parent}: {exc.strerror}") from None
        return atomic_write(path, self.onnx_bytes, PipelineError)


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


def recover(
    student: nn.Module,
    teacher: nn.Module,
    plan: CompressionPlan,
    data,
    *,
    lr: float = 0.01,
    batch_size: int = 64,
    max_train_batches: int | None = None,
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Knowledge-distilled fine-tuning: `(1-alpha)*CE + alpha*T^2*KL(teacher || student)` (Hinton et al.)."""
    from .training import train_classifier

    budget = plan.update.budget
    if budget == 0:
        return {"epochs": 0, "seconds": 0.0}
    params = trainable_parameters(student, plan.update.scope, data.example_input())
    result = train_classifier(
        student,
        data.loader("train", batch_size=batch_size),
        epochs=budget,
        lr=lr,
        teacher=teacher.eval(),
        temperature=plan.distill.temperature,
        alpha=plan.distill.alpha,
        params=params,
        max_steps=max_train_batches * budget if max_train_batches else None,
        seed=seed,
        progress=progress,
    )
    student.eval()
    return {"epochs": budget, **result}


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


def quantization_types(device_spec=None) -> tuple[str, str]:
    """(activation, weight) INT8 types for a target: U8S8 on x86 CPUs, S8S8 on GPUs/TensorRT."""
    kind = getattr(device_spec, "kind", "cpu") if device_spec is not None else "cpu"
    return ("QInt8", "QInt8") if kind in ("gpu", "edge-gpu") else ("QUInt8", "QInt8")


def quantize_int8(
    onnx_bytes: bytes,
    int8_groups: set[str],
    groups: Sequence[LayerGroup],
    calibration: Sequence[np.ndarray],
    *,
    device_spec=None,
) -> tuple[bytes, int, list[str]]:
    """Static INT8 QDQ quantization of the nodes of `int8_groups`; all other nodes stay float.

    Returns (bytes, number of QuantizeLinear nodes, excluded node names).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    act, wt = quantization_types(device_spec)
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
                per_channel=True,
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
    converted.ir_version = min(converted.ir_version, MAX_IR_VERSION)
    return converted.SerializeToString()


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
    measure_accuracy: bool = True,
    accuracy_runner: Callable[[bytes], Callable[[np.ndarray], np.ndarray]] | None = None,
    seed: int = 0,
    progress: Callable[[str, dict], None] | None = None,
) -> CompressedModel:
    """Apply `plan` to a copy of `model` and export the result; the input model is untouched.

    :param model: the pretrained classifier (also the distillation teacher unless `teacher` is given)
    :param plan: the compression plan; groups it does not name get `plan.default`
    :param data: a `hadmc.data.DataBundle` (train split for recovery and calibration, test for accuracy)
    :param device_spec: the target's DeviceSpec (supported precisions, quantization types); None = x86 CPU
    :param groups: precomputed `layer_groups(model, ...)` (derived when None)
    :param importance: channel importance for pruning: "l1" or "taylor"
    :param round_to: channel-count alignment after pruning
    :param recovery_lr: peak learning rate of KD recovery (one-cycle SGD)
    :param batch_size: batch size of recovery training and accuracy evaluation
    :param max_train_batches: cap on recovery batches per epoch (quick runs and tests)
    :param max_eval_batches: cap on accuracy batches (tests only; reported runs use the whole split)
    :param calibration_batches: training batches used to calibrate INT8 activation ranges
    :param measure_accuracy: measure top-1 of the exported artifact on the test split
    :param accuracy_runner: builds a batch -> logits function for the artifact in the target
        runtime (e.g. a HAL probe's session); default: ONNX Runtime CPU
    :param seed: seed of recovery fine-tuning
    :param progress: called with (stage, info) as stages finish
    """
    timings: dict[str, float] = {}
    say = progress or (lambda stage, info: None)
    example = data.example_input()
    groups = list(groups) if groups is not None else layer_groups(model, example)
    plan = resolve_plan(plan, groups)
    supported = set(getattr(device_spec, "precisions", None) or ("fp32", "int8"))
    unsupported = plan.precisions() - supported
    if unsupported:
        raise PlanError(
            f"plan asks for {sorted(unsupported)} but the target supports only {sorted(supported)}; "
            "change the groups' precision"
        )

    t = time.perf_counter()
    student = copy.deepcopy(model).eval()
    calib_xy = []
    if importance == "taylor":
        loader = data.loader("train", batch_size=32, shuffle=False)
        calib_xy = [b for _, b in zip(range(4), loader)]
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
    timings["prune_s"] = time.perf_counter() - t
    say("prune", {"seconds": timings["prune_s"]})

    t = time.perf_counter()
    recovery = recover(
        student, teacher or model, plan, data, lr=recovery_lr, batch_size=batch_size, max_train_batches=max_train_batches, seed=seed
    )
    timings["recover_s"] = time.perf_counter() - t
    say("recover", recovery)

    macs, params = count_macs_params(student, example)
    t = time.perf_counter()
    fold_batchnorm(student, plan, groups, example)
    keep_bn = any(d.fusion == "none" for d in plan.groups.values())
    onnx_bytes = export_onnx(student, example, keep_batchnorm=keep_bn)
    timings["export_s"] = time.perf_counter() - t
    say("export", {"bytes": len(onnx_bytes)})

    int8 = {n for n, d in plan.groups.items() if d.precision == "int8"}
    fp16 = {n for n, d in plan.groups.items() if d.precision == "fp16"}
    n_q, excluded = 0, []
    t = time.perf_counter()
    # fp16 first: the float16 converter cannot follow Q/DQ pairs, while the INT8 quantizer
    # leaves the (excluded) fp16 nodes alone.
    if fp16:
        onnx_bytes = convert_fp16(onnx_bytes, fp16, groups)
    if int8:
        calib = data.calibration_batches(n_batches=calibration_batches)
        onnx_bytes, n_q, excluded = quantize_int8(onnx_bytes, int8, groups, calib, device_spec=device_spec)
    timings["quantize_s"] = time.perf_counter() - t
    if int8 or fp16:
        say("quantize", {"int8_nodes": n_q, "excluded": len(excluded)})

    accuracy = None
    if measure_accuracy:
        t = time.perf_counter()
        run = accuracy_runner(onnx_bytes) if accuracy_runner else None
        loader = data.loader("test", batch_size=batch_size)
        if max_eval_batches:
            loader = [b for _, b in zip(range(max_eval_batches), loader)]
        accuracy = onnx_accuracy(onnx_bytes, loader, run=run)
        timings["accuracy_s"] = time.perf_counter() - t
        say("accuracy", {"accuracy": accuracy})

    return CompressedModel(
        model=student,
        onnx_bytes=onnx_bytes,
        plan=plan,
        groups=groups,
        input_shape=tuple(example.shape),
        accuracy=accuracy,
        macs=macs,
        params=params,
        quantized=bool(int8),
        int8_nodes=n_q,
        excluded_nodes=excluded,
        timings=timings,
        recovery=recovery,
    )
