import numpy as np
import pytest
import torch
import torchvision

from hadmc.groups import (
    GROUP_FEATURE_DIM,
    MODEL_FEATURE_DIM,
    layer_groups,
    model_features,
    module_candidates,
    nodes_of_groups,
    with_latency_shares,
)


def _resnet18_cifar():
    m = torchvision.models.resnet18(weights=None, num_classes=10)
    m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = torch.nn.Identity()
    return m.eval()


def test_resnet18_groups_couple_the_residual_chain_and_keep_the_classifier_unprunable():
    groups = layer_groups(_resnet18_cifar(), torch.randn(1, 3, 32, 32))
    names = [g.name for g in groups]
    assert len(groups) == 13
    assert names[0] == "conv1" and groups[0].kind == "stem"
    # the stem's channels are the residual stream of layer1: coupled with both blocks' conv2
    assert set(groups[0].modules) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    stage2 = next(g for g in groups if "layer2.0.downsample.0" in g.modules)
    assert stage2.kind == "residual" and set(stage2.modules) == {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"}
    assert names[-1] == "fc" and groups[-1].kind == "linear" and not groups[-1].prunable
    assert all(g.prunable for g in groups[:-1])
    assert sum(g.flops_share for g in groups) == pytest.approx(1.0)
    assert [g.depth for g in groups] == sorted(g.depth for g in groups)


def test_mobilenet_v2_has_depthwise_groups():
    groups = layer_groups(torchvision.models.mobilenet_v2(weights=None, num_classes=10).eval(), torch.randn(1, 3, 32, 32))
    kinds = {g.kind for g in groups}
    assert {"stem", "depthwise", "residual", "linear"} <= kinds


def test_features_have_fixed_length_and_are_finite():
    for model in (_resnet18_cifar(), torchvision.models.mobilenet_v2(weights=None, num_classes=10).eval()):
        groups = layer_groups(model, torch.randn(1, 3, 32, 32))
        feats = np.stack([g.features() for g in groups])
        assert feats.shape == (len(groups), GROUP_FEATURE_DIM)
        assert np.isfinite(feats).all()
        summary = model_features(groups)
        assert summary.shape == (MODEL_FEATURE_DIM,) and np.isfinite(summary).all()


def test_prune_levels_that_would_empty_a_group_are_invalid():
    groups = layer_groups(_resnet18_cifar(), torch.randn(1, 3, 32, 32))
    fc = groups[-1]
    assert fc.prune_levels_valid([0.0, 0.5]).tolist() == [True, False]
    stem = groups[0]
    assert stem.prune_levels_valid([0.0, 0.5, 0.95]).all()


def test_exporter_node_names_map_to_their_layers():
    assert "layer1.0.conv1" in module_candidates("/layer1/layer1.0/conv1/Conv")
    assert "layer2.0.downsample.0" in module_candidates("/layer2/layer2.0/downsample/downsample.0/Conv")
    assert "features.2.conv.0.0" in module_candidates("/features/features.2/conv/conv.0/conv.0.0/Conv")
    groups = layer_groups(_resnet18_cifar(), torch.randn(1, 3, 32, 32))
    nodes = ["/conv1/Conv", "/layer1/layer1.0/conv1/Conv", "/layer2/layer2.0/downsample/downsample.0/Conv", "/fc/Gemm", "/Add"]
    owned = nodes_of_groups(nodes, groups)
    assert owned["conv1"] == ["/conv1/Conv"]
    assert owned["layer1.0.conv1"] == ["/layer1/layer1.0/conv1/Conv"]
    assert owned["layer2.0.conv2"] == ["/layer2/layer2.0/downsample/downsample.0/Conv"]
    assert owned["fc"] == ["/fc/Gemm"]


def test_latency_shares_come_from_node_times_and_count_unowned_nodes_in_the_total():
    groups = layer_groups(_resnet18_cifar(), torch.randn(1, 3, 32, 32))
    shared = with_latency_shares(groups, {"/conv1/Conv": 3.0, "/layer1/layer1.0/conv1/Conv": 1.0, "/GlobalAveragePool": 1.0})
    by_name = {g.name: g.latency_share for g in shared}
    assert by_name["conv1"] == pytest.approx(0.6)
    assert by_name["layer1.0.conv1"] == pytest.approx(0.2)
    assert by_name["fc"] == 0.0
    assert shared[0].features()[-1] == 1.0  # the "known" flag


def test_profiled_latency_shares_trace_fused_runtime_nodes_back_to_their_layers():
    from hadmc import hal
    from hadmc.pipeline import export_onnx

    model = _resnet18_cifar()
    x = torch.randn(1, 3, 32, 32)
    groups = layer_groups(model, x)
    onnx_bytes = export_onnx(model, x)
    node_ms = hal.get_latency_probe("ort-cpu").profile_nodes(onnx_bytes)
    # ONNX Runtime renames fused Conv+Relu nodes after the Relu's output tensor
    assert any(name.endswith("Relu_output_0_nchwc") for name in node_ms)
    shared = with_latency_shares(groups, node_ms, onnx_bytes)
    assert sum(g.latency_share for g in shared) == pytest.approx(1.0, abs=0.02)
    assert all(g.latency_share > 0.01 for g in shared[:-1])  # every conv group takes real time


def test_a_model_torch_pruning_cannot_trace_keeps_precision_decisions_but_refuses_pruning():
    from hadmc.errors import PlanError
    from hadmc.pipeline import resolve_plan
    from hadmc.plan import CompressionPlan

    model = torchvision.models.shufflenet_v2_x1_0(weights=None, num_classes=10).eval()
    groups = layer_groups(model, torch.randn(1, 3, 32, 32))
    n_layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    assert len(groups) == n_layers and not any(g.prunable for g in groups)
    assert resolve_plan(CompressionPlan.uniform(0.0, "int8"), groups).groups[groups[0].name].precision == "int8"
    with pytest.raises(PlanError, match="no prunable layer groups"):
        resolve_plan(CompressionPlan.uniform(0.5), groups)
