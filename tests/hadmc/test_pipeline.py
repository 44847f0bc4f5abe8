"""The pipeline changes the model for real: physical pruning, real ONNX, real INT8 kernels."""

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hadmc import hal
from hadmc.errors import PlanError
from hadmc.groups import layer_groups
from hadmc.pipeline import (
    apply_plan,
    count_macs_params,
    export_onnx,
    fold_batchnorm,
    onnx_accuracy,
    prune,
    resolve_plan,
)
from hadmc.plan import CompressionPlan
from hadmc.training import evaluate_accuracy


def _run_onnx(onnx_bytes: bytes, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _cifar_stem(name: str) -> torch.nn.Module:
    from hadmc.models import build_model

    return build_model(name, 10, cifar_stem=True).eval()


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "efficientnet_b0"])
def test_pruning_removes_channels_physically(arch):
    model = _cifar_stem(arch)
    x = torch.randn(2, 3, 32, 32)
    groups = layer_groups(model, x)
    plan = resolve_plan(CompressionPlan.uniform(0.5, budget=0), groups)
    macs0, params0 = count_macs_params(model, x)
    pruned = prune(copy.deepcopy(model), plan, groups, x)
    macs1, params1 = count_macs_params(pruned, x)
    first = pruned.get_submodule(groups[0].modules[0])
    assert first.out_channels == groups[0].out_channels - int(groups[0].out_channels * 0.5)
    assert first.weight.shape[0] == first.out_channels  # the tensor itself shrank
    assert params1 < 0.45 * params0 and macs1 < 0.45 * macs0
    assert pruned(x).shape == (2, 10)  # the classifier keeps its outputs
    # the original model is untouched
    assert model.get_submodule(groups[0].modules[0]).out_channels == groups[0].out_channels


def test_onnx_export_matches_pytorch_before_quantization_with_and_without_folding(trained_small, digits16):
    model, _ = trained_small
    x = digits16.example_input(batch=8)
    groups = layer_groups(model, x)
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(_run_onnx(export_onnx(model, x, keep_batchnorm=True), x), expected, rtol=1e-4, atol=1e-4)
    folded = copy.deepcopy(model)
    n = fold_batchnorm(folded, resolve_plan(CompressionPlan.uniform(), groups), groups, x)
    assert n == 5 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    np.testing.assert_allclose(folded(x).detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    onnx_bytes = export_onnx(folded, x)
    ops = {n.op_type for n in onnx.load_from_string(onnx_bytes).graph.node}
    assert "BatchNormalization" not in ops
    np.testing.assert_allclose(_run_onnx(onnx_bytes, x), expected, rtol=1e-4, atol=1e-4)


def test_fusion_none_keeps_batchnorm_as_its_own_op(trained_small, digits16):
    model, _ = trained_small
    out = apply_plan(model, CompressionPlan.parse({"default": {"fusion": "none"}, "update": {"budget": 0}}), digits16, measure_accuracy=False)
    ops = [n.op_type for n in onnx.load_from_string(out.onnx_bytes).graph.node]
    assert ops.count("BatchNormalization") == 5


@pytest.fixture(scope="module")
def fp32_and_int8(trained_small, digits16):
    model, _ = trained_small
    fp32 = apply_plan(model, CompressionPlan.uniform(0.0, "fp32", budget=0), digits16)
    int8 = apply_plan(model, CompressionPlan.uniform(0.0, "int8", budget=0), digits16)
    return fp32, int8


def test_int8_plan_produces_qdq_nodes_and_keeps_accuracy(fp32_and_int8):
    fp32, int8 = fp32_and_int8
    ops = [n.op_type for n in onnx.load_from_string(int8.onnx_bytes).graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    assert int8.quantized and int8.int8_nodes == ops.count("QuantizeLinear")
    assert abs(int8.accuracy - fp32.accuracy) <= 0.02
    assert int8.model_bytes < 0.5 * fp32.model_bytes  # int8 weights really are stored as int8


def _weight_producers(onnx_bytes: bytes) -> dict[str, str]:
    """Conv/Gemm node name -> what feeds its weight: 'initializer' (float) or the producing op."""
    graph = onnx.load_from_string(onnx_bytes).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    return {
        n.name: ("initializer" if n.input[1] in inits else producer.get(n.input[1], "?"))
        for n in graph.node
        if n.op_type in ("Conv", "Gemm")
    }


def test_mixed_plan_keeps_the_excluded_groups_nodes_in_fp32(trained_small, digits16):
    model, _ = trained_small
    plan = CompressionPlan.parse({"default": {"precision": "int8"}, "groups": {"stem.0": {"precision": "fp32"}}, "update": {"budget": 0}})
    out = apply_plan(model, plan, digits16)
    feeds = _weight_producers(out.onnx_bytes)
    stem_group = next(g for g in out.groups if g.name == "stem.0")
    assert set(stem_group.modules) == {"stem.0", "conv_b"}  # coupled by the residual add
    fp32_nodes = ["/stem/stem.0/Conv", "/conv_b/Conv"]
    assert all(feeds[n] == "initializer" for n in fp32_nodes)
    others = [n for n in feeds if n not in fp32_nodes]
    assert len(others) == 4 and all(feeds[n] == "DequantizeLinear" for n in others)
    assert out.excluded_nodes == sorted(fp32_nodes)


def test_prune50_with_kd_recovery_cuts_params_3x_within_2_points(trained_small, digits16):
    model, base_acc = trained_small
    x = digits16.example_input()
    macs0, params0 = count_macs_params(model, x)
    out = apply_plan(model, CompressionPlan.uniform(0.5, "fp32", budget=3, temperature=4, alpha=0.7), digits16, recovery_lr=0.02)
    assert params0 / out.params >= 3.0 and macs0 / out.macs >= 3.0
    onnx_base = onnx_accuracy(export_onnx(model, x), digits16.loader("test"))
    assert out.accuracy >= onnx_base - 0.02
    assert out.recovery["epochs"] == 3 and out.recovery["steps"] > 0


def test_taylor_importance_prunes_too(trained_small, digits16):
    model, _ = trained_small
    out = apply_plan(model, CompressionPlan.uniform(0.25, budget=0), digits16, importance="taylor", measure_accuracy=False)
    assert out.model.get_submodule("stem.0").out_channels == 24


def test_round_to_aligns_channel_counts(trained_small, digits16):
    model, _ = trained_small
    out = apply_plan(model, CompressionPlan.uniform(0.3, budget=0), digits16, round_to=8, measure_accuracy=False)
    assert out.model.get_submodule("stem.0").out_channels % 8 == 0


def test_classifier_is_never_pruned_and_naming_it_is_an_error(trained_small, digits16):
    model, _ = trained_small
    out = apply_plan(model, CompressionPlan.uniform(0.5, budget=0), digits16, measure_accuracy=False)
    assert out.model.fc.out_features == 10
    with pytest.raises(PlanError, match="plan.groups.fc.prune_ratio"):
        apply_plan(model, CompressionPlan.parse({"groups": {"fc": {"prune_ratio": 0.5}}}), digits16)


def test_precision_the_device_lacks_is_a_plan_error(trained_small, digits16):
    model, _ = trained_small
    cpu = hal.load_device_spec("x86-cpu")
    assert "fp16" not in cpu.precisions
    with pytest.raises(PlanError, match="fp16"):
        apply_plan(model, CompressionPlan.uniform(0.0, "fp16", budget=0), digits16, cpu)


def test_recovery_scope_head_trains_only_the_classifier(trained_small, digits16):
    model, _ = trained_small
    out = apply_plan(model, CompressionPlan.parse({"default": {"fusion": "none"}, "update": {"scope": "head", "budget": 1}}), digits16, measure_accuracy=False)
    torch.testing.assert_close(out.model.conv_a.weight, model.conv_a.weight)
    assert not torch.equal(out.model.fc.weight, model.fc.weight)


def test_a_pruned_plan_that_freezes_part_of_the_model_re_estimates_the_frozen_batchnorm_statistics_first(trained_small, digits16):
    from hadmc.pipeline import recalibrate_batchnorm, recalibration_batches, recover, trainable_parameters

    model, _ = trained_small
    plan = CompressionPlan.uniform(0.5, "fp32", scope="half", budget=1)
    no_recovery = plan.model_copy(update={"update": plan.update.model_copy(update={"budget": 0})})
    pruned = apply_plan(model, no_recovery, digits16, measure_accuracy=False).model  # pruned, statistics as before pruning
    trains = {id(p) for p in trainable_parameters(pruned, "half", digits16.example_input())}
    norms = [n for n, m in pruned.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    frozen = [n for n in norms if not any(id(p) in trains for p in pruned.get_submodule(n).parameters())]
    assert frozen and len(frozen) < len(norms)
    expected = copy.deepcopy(pruned)
    recalibrate_batchnorm(expected, recalibration_batches(digits16))
    students = {}
    for refresh in (True, False):
        students[refresh] = copy.deepcopy(pruned)
        recover(students[refresh], model, plan, digits16, max_train_batches=2, refresh_frozen_norms=refresh)

    def mean(m, name):
        return m.get_submodule(name).running_mean

    # pruning left the frozen layers' statistics stale; the refresh replaces them, and training leaves them be
    assert not torch.allclose(mean(pruned, frozen[0]), mean(expected, frozen[0]))
    for name in frozen:
        torch.testing.assert_close(mean(students[True], name), mean(expected, name))
        torch.testing.assert_close(mean(students[False], name), mean(pruned, name))


def _initializer_types(onnx_bytes: bytes) -> dict[str, int]:
    return {i.name: i.data_type for i in onnx.load_from_string(onnx_bytes).graph.initializer}


def test_fp16_plan_for_a_gpu_target_converts_only_the_chosen_groups(trained_small, digits16):
    model, _ = trained_small
    gpu = hal.load_device_spec("rtx-4090")
    plan = CompressionPlan.parse({"default": {"precision": "fp16"}, "groups": {"fc": {"precision": "fp32"}}, "update": {"budget": 0}})
    out = apply_plan(model, plan, digits16, gpu)
    types = _initializer_types(out.onnx_bytes)
    assert types["conv_a.weight"] == onnx.TensorProto.FLOAT16 and types["fc.weight"] == onnx.TensorProto.FLOAT
    x = digits16.example_input(batch=8)
    np.testing.assert_allclose(_run_onnx(out.onnx_bytes, x), model(x).detach().numpy(), atol=0.05)
    assert out.model_bytes < 0.6 * len(export_onnx(model, x))


def test_int8_and_fp16_groups_mix_in_one_artifact(trained_small, digits16, fp32_and_int8):
    model, _ = trained_small
    gpu = hal.load_device_spec("rtx-4090")
    plan = CompressionPlan.parse({"default": {"precision": "int8"}, "groups": {"conv_a": {"precision": "fp16"}}, "update": {"budget": 0}})
    out = apply_plan(model, plan, digits16, gpu)
    assert _initializer_types(out.onnx_bytes)["conv_a.weight"] == onnx.TensorProto.FLOAT16
    assert _weight_producers(out.onnx_bytes)["/conv_b/Conv"] == "DequantizeLinear"
    assert abs(out.accuracy - fp32_and_int8[0].accuracy) <= 0.03


def test_a_float16_tensor_feeding_two_float32_nodes_gets_one_cast_on_any_onnxruntime():
    # ONNX Runtime's float16 converter before 1.32 adds one identical Cast per float32 consumer
    # (same name, same output); ORT then refuses the graph. Seen on a GPU with ORT 1.31: every
    # plan mixing fp16 with int8 failed. The copies are built here as that converter built them.
    from onnx import TensorProto, helper

    from hadmc.pipeline import _drop_repeated_nodes

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    half = helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16, name="to_half")
    relu = helper.make_node("Relu", ["h"], ["r"], name="relu")
    casts = [helper.make_node("Cast", ["r"], ["r_cast_to_fp32"], to=TensorProto.FLOAT, name="r_cast_to_fp32_node") for _ in range(2)]
    a = helper.make_node("Neg", ["r_cast_to_fp32"], ["a"], name="neg")
    b = helper.make_node("Abs", ["r_cast_to_fp32"], ["b"], name="abs")
    add = helper.make_node("Add", ["a", "b"], ["y"], name="add")
    info = [helper.make_tensor_value_info("r_cast_to_fp32", TensorProto.FLOAT, [1, 4]) for _ in range(2)]
    graph = helper.make_graph([half, relu, casts[0], a, casts[1], b, add], "g", [x], [y], value_info=info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(Exception, match="same node name|more than one node"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    fixed = _drop_repeated_nodes(model)
    assert [n.name for n in fixed.graph.node].count("r_cast_to_fp32_node") == 1 and len(fixed.graph.value_info) == 1
    sess = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"])
    v = np.array([[-1.0, 0.5, 2.0, -3.0]], dtype=np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": v})[0], np.zeros_like(v))  # -relu(v) + |relu(v)|


@pytest.mark.parametrize("arch", __import__("hadmc.models", fromlist=["ARCHITECTURES"]).ARCHITECTURES)
def test_every_architecture_exports_at_32px_and_matches_pytorch(arch):
    torch.manual_seed(0)
    model = _cifar_stem(arch)
    x = torch.randn(2, 3, 32, 32)
    np.testing.assert_allclose(_run_onnx(export_onnx(model, x), x), model(x).detach().numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
def test_recovery_on_a_gpu_trains_there_and_hands_back_a_cpu_model_as_good_as_cpu_training(trained_small, digits16):
    from hadmc.pipeline import TeacherLogits, recover

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    model, _ = trained_small
    plan = CompressionPlan.uniform(0.5, "fp32", budget=2)
    pruned = apply_plan(model, plan.model_copy(update={"update": plan.update.model_copy(update={"budget": 0})}), digits16,
                        measure_accuracy=False).model  # fmt: skip
    accuracy = {}
    for device in ("cpu", "cuda"):
        student = copy.deepcopy(pruned)
        logits = TeacherLogits(model, len(digits16.split("train")))
        info = recover(student, model, plan, digits16, logits=logits, device=device)
        assert info["device"] == device and info["steps"] == info["full_steps"] > 0
        assert all(p.device.type == "cpu" for p in student.parameters()) and all(p.device.type == "cpu" for p in model.parameters())
        assert logits.computed == len(digits16.split("train"))
        accuracy[device] = evaluate_accuracy(student, digits16.loader("test"))
    # CUDA kernels round differently, so the two students differ a little, not in quality
    assert abs(accuracy["cuda"] - accuracy["cpu"]) <= 0.03, accuracy
