"""Costs beside FLOPs: activations, latency and training memory, each cross-checked or ordered."""

import pytest
import torch
from torch import nn

from scalesearch.config.spaces import load_space
from scalesearch.models.cost import (
    Cost,
    FullCost,
    count_params,
    measure_activations,
    measure_all_costs,
    measure_cost,
    measure_latency,
    measure_train_memory,
)
from scalesearch.models.families import ModelSpec


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as a search trial runs: timings stay stable when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cnn() -> nn.Module:
    """conv 1->4 (3x3, 8x8 out), ReLU, flatten, linear 256->10: hand-countable."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))


def proxy(space_name: str, *, width: float, resolution: int) -> tuple[nn.Module, int]:
    """The proxy of `space_name` at a width multiplier and resolution, on 1-channel images."""
    space = load_space(space_name)
    spec = ModelSpec(width_mult=width, depth_mult=1.0, resolution=resolution, num_classes=10, in_channels=1)
    return space.proxy_family.build(spec), resolution


def test_measure_cost_keeps_its_contract():
    model = tiny_cnn()
    cost = measure_cost(model, resolution=8, in_channels=1)
    assert isinstance(cost, Cost)
    assert cost.params == count_params(model) == (4 * 9 + 4) + (256 * 10 + 10)
    assert cost.flops == 8 * 8 * 4 * 9 + 256 * 10


def test_activations_are_conv_and_linear_outputs():
    assert measure_activations(tiny_cnn(), resolution=8, in_channels=1) == 4 * 8 * 8 + 10


@pytest.mark.parametrize("space_name", ["resnet18", "resnet50", "efficientnet_b0"])
def test_activations_agree_with_fvcore_on_cnns(space_name):
    from fvcore.nn import ActivationCountAnalysis

    model, resolution = proxy(space_name, width=0.25, resolution=16)
    analysis = ActivationCountAnalysis(model.eval(), torch.zeros(1, 1, resolution, resolution))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    assert measure_activations(model, resolution=resolution, in_channels=1) == analysis.total()


def test_measurements_leave_the_model_as_they_found_it():
    model, resolution = proxy("resnet18", width=0.125, resolution=16)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure_all_costs(model, resolution=resolution, in_channels=1, latency_batch=4, memory_batch=4, repeats=1)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics untouched
    assert all(p.grad is None for p in model.parameters())


def test_train_memory_covers_weights_gradients_momentum_and_activations():
    model = tiny_cnn()
    params = count_params(model) * 4
    batch = 16
    peak = measure_train_memory(model, resolution=8, in_channels=1, batch_size=batch)
    # Weights, gradients and momentum (3 x params), the batch, and the conv output kept for backward.
    floor = 3 * params + batch * 64 * 4 + batch * 4 * 64 * 4
    assert floor <= peak <= 3 * floor


def test_train_memory_agrees_with_the_profiler():
    """The dispatch-mode tracker and torch.profiler's allocator events agree within 5% on a proxy.

    The profiler also sees scratch buffers that CPU kernels allocate internally (im2col columns),
    so it never reads lower; on tiny maps with many channels (16 px, width 0.25) scratch can add
    20-40%, which the tracker leaves out by design.
    """
    import copy

    from torch.profiler import ProfilerActivity, profile

    model, resolution = proxy("resnet18", width=0.125, resolution=32)
    batch = 32
    tracked = measure_train_memory(model, resolution=resolution, in_channels=1, batch_size=batch)

    net = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    images, labels = torch.randn(batch, 1, resolution, resolution), torch.randint(0, 10, (batch,))

    def step():
        nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    resident = [*net.parameters(), *net.buffers(), images, labels]
    resident += [s["momentum_buffer"] for s in optimizer.state.values()]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    profiled = sum(t.numel() * t.element_size() for t in resident) + peak
    assert 0.95 * profiled <= tracked <= profiled


@pytest.mark.parametrize("space_name", ["resnet18", "vit_tiny"])
def test_a_bigger_variant_is_not_cheaper(space_name):
    costs = []
    for width, resolution in ((0.25, 16), (0.5, 32)):
        model, _ = proxy(space_name, width=width, resolution=resolution)
        costs.append(
            measure_all_costs(model, resolution=resolution, in_channels=1, latency_batch=8, memory_batch=8, repeats=1)
        )
    small, large = costs
    for cost in (small, large):
        assert isinstance(cost, FullCost)
        assert min(cost.params, cost.flops, cost.activations, cost.peak_train_memory_bytes) > 0
        assert cost.latency_batch1_s > 0 and cost.latency_throughput_s > 0
        assert cost.throughput_batch == 8 and cost.memory_batch == 8 and cost.device == "cpu"
    assert small.params <= large.params
    assert small.flops < large.flops
    assert small.activations < large.activations
    assert small.peak_train_memory_bytes < large.peak_train_memory_bytes
    record = large.as_dict()
    assert record["images_per_second"] == pytest.approx(8 / large.latency_throughput_s)
    assert {"params", "flops", "activations", "latency_batch1_s", "peak_train_memory_bytes"} <= set(record)


def test_latency_of_a_much_bigger_variant_is_larger():
    # About 200x the FLOPs apart, so machine load cannot swap them.
    small, small_res = proxy("resnet18", width=0.125, resolution=8)
    large, large_res = proxy("resnet18", width=1.0, resolution=32)
    fast = measure_latency(small, resolution=small_res, in_channels=1, batch_size=8, repeats=3)
    slow = measure_latency(large, resolution=large_res, in_channels=1, batch_size=8, repeats=3)
    assert 0 < fast < slow


def test_latency_rejects_bad_arguments():
    with pytest.raises(ValueError):
        measure_latency(tiny_cnn(), resolution=8, in_channels=1, repeats=0)
    with pytest.raises(ValueError):
        measure_train_memory(tiny_cnn(), resolution=8, in_channels=1, batch_size=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_memory_is_close_to_the_cpu_tracker():
    model, resolution = proxy("resnet18", width=0.5, resolution=32)
    cpu = measure_train_memory(model, resolution=resolution, in_channels=1, batch_size=32)
    cuda = measure_train_memory(model, resolution=resolution, in_channels=1, batch_size=32, device="cuda")
    assert cuda == pytest.approx(cpu, rel=0.25)
    assert measure_latency(model, resolution=resolution, in_channels=1, device="cuda") > 0
