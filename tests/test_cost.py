"""training.cost: parameter and FLOP accounting used by the sweep's quality-vs-cost plots."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from training.cost import model_cost
from training.models import ModelConfig, build_denoiser


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core box: two OpenMP threads spin against other processes
    yield
    torch.set_num_threads(before)


def cfg(**kw):
    base = dict(preset="tiny", resolution=16, window=4, memory="prepend", memory_length=8)
    base.update(kw)
    return ModelConfig(**base)


def test_costs_are_positive_and_consistent():
    c = model_cost(cfg(), sampling_steps=10)
    assert c["params"] > 0 and c["forward_flops_per_clip"] > 0
    assert c["train_flops_per_clip"] == 3 * c["forward_flops_per_clip"]
    assert c["flops_per_generated_frame"] == pytest.approx(10 * c["forward_flops_per_clip"] / 4)
    assert model_cost(cfg(), sampling_steps=20)["flops_per_generated_frame"] == pytest.approx(
        2 * c["flops_per_generated_frame"])


def test_meta_count_matches_a_real_forward():
    """FLOPs counted on the meta device equal those of a real CPU forward; params equal the built model's."""
    config = cfg(memory="concat", compression="modulated", budget=4)
    c = model_cost(config)
    net = build_denoiser(config, seed=0)
    assert c["params"] == sum(p.numel() for p in net.parameters())
    x = torch.zeros(1, 4, 3, 16, 16)
    # the math backend decomposes attention into counted matmuls (the CPU flash kernel is not counted)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        net(x, torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 8, 3, 16, 16),
            torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.bool))
    assert counter.get_total_flops() == c["forward_flops_per_clip"]


@pytest.mark.parametrize("memory", ["prepend", "concat", "cross_attn"])
def test_cost_grows_with_memory_length(memory):
    short, long = (model_cost(cfg(memory=memory, memory_length=m)) for m in (4, 12))
    none = model_cost(cfg(memory="none"))
    assert none["forward_flops_per_clip"] < short["forward_flops_per_clip"] < long["forward_flops_per_clip"]


def test_prepend_cost_grows_with_budget_and_compression_saves():
    full = model_cost(cfg(memory_length=12))
    small, big = (model_cost(cfg(memory_length=12, compression="joint", budget=b)) for b in (2, 8))
    assert small["forward_flops_per_clip"] < big["forward_flops_per_clip"] < full["forward_flops_per_clip"]
    assert small["memory_frames"] == 2 and full["memory_frames"] == 12


def test_bigger_presets_cost_more():
    costs = [model_cost(ModelConfig(preset=p, resolution=64)) for p in ("tiny", "small", "base", "paper")]
    assert all(a["params"] < b["params"] for a, b in zip(costs, costs[1:]))
    assert all(a["forward_flops_per_clip"] < b["forward_flops_per_clip"] for a, b in zip(costs, costs[1:]))


def test_bad_sampling_steps():
    with pytest.raises(ValueError, match="sampling_steps"):
        model_cost(cfg(), sampling_steps=0)
