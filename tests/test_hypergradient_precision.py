"""The precision policy: descent steps may use bf16 autocast and TF32; every hypergradient
evaluation runs in float32 with TF32 off (engine/precision.py), and the flags come back."""

import pytest
import torch

from sgl_betty import HypergradConfig, Learner, SGLConfig, build_sgl_engine
from sgl_betty.engine.precision import full_precision
from sgl_betty.search_space import Architecture, SearchNetwork
from sgl_betty.tf32_emulation import EmulatedTF32, round_to_tf32

STEPS = 2


def data(count, labeled=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x = torch.randn(4, 3, 8, 8, generator=g)
        out.append((x, torch.randint(0, 5, (4,), generator=g)) if labeled else x)
    return out


def build(num, kind, **options):
    torch.manual_seed(0)

    def net():
        return SearchNetwork(4, 5, 3, steps=STEPS, multiplier=STEPS)

    learners = [
        Learner(Architecture(steps=STEPS, multiplier=STEPS), net() if num > 1 else None, net())
        for _ in range(num)
    ]
    config = SGLConfig(hypergrad=HypergradConfig(type=kind, cg_iterations=2), **options)
    engine = build_sgl_engine(
        learners, data(2), data(2, seed=1), data(2, False, seed=2), config, device="cpu"
    )
    return engine, learners


@pytest.fixture
def tf32_everywhere():
    switches = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    saved = [switch.fp32_precision for switch in switches]
    for switch in switches:
        switch.fp32_precision = "tf32"
    yield
    for switch, value in zip(switches, saved):
        switch.fp32_precision = value


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["darts", "unrolled", "neumann", "cg"])
def test_second_order_evaluations_are_float32_without_tf32(kind, tf32_everywhere):
    engine, learners = build(2, kind, autocast_dtype=torch.bfloat16)
    lowers = [p for p in engine.problems if p.role in ("v", "w")]
    seen = []

    def record(module, inputs, output):
        descent = any(p.descending for p in lowers)
        seen.append((descent, output.dtype, torch.backends.cudnn.conv.fp32_precision))

    for learner in learners:
        for net in (learner.v_net, learner.w_net):
            for module in net.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.register_forward_hook(record)
    with EmulatedTF32():
        engine.step()
    descent = {(dtype, precision) for is_descent, dtype, precision in seen if is_descent}
    hypergradient = {(dtype, precision) for is_descent, dtype, precision in seen if not is_descent}
    assert descent == {(torch.bfloat16, "tf32")}
    assert hypergradient == {(torch.float32, "ieee")}
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # restored after the step
    assert all(g.dtype == torch.float32 for g in engine.last_hypergrad[0])


def test_first_order_validation_follows_the_descent_precision():
    engine, learners = build(1, "first_order", autocast_dtype=torch.bfloat16)
    dtypes = []
    conv = next(m for m in learners[0].w_net.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    engine.step()
    assert set(dtypes) == {torch.bfloat16}  # no second-order term to protect


def test_full_precision_restores_every_switch(tf32_everywhere):
    switches = (
        torch.backends.cudnn.conv,
        torch.backends.cudnn.rnn,
        torch.backends.cuda.matmul,
        torch.backends.mkldnn.conv,
        torch.backends.mkldnn.matmul,
    )
    before = [switch.fp32_precision for switch in switches]
    with torch.autocast("cpu", dtype=torch.bfloat16), full_precision("cpu"):
        assert [switch.fp32_precision for switch in switches] == ["ieee"] * len(switches)
        assert not torch.is_autocast_enabled("cpu")
    assert [switch.fp32_precision for switch in switches] == before


def test_float16_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="gradient scaler"):
        SGLConfig(autocast_dtype=torch.float16)


def test_tf32_rounding_keeps_ten_mantissa_bits():
    values = torch.tensor([1.0, 1.0 + 2**-11, 1.0 + 2**-10 + 2**-12, -(1.0 + 2**-12), 2.0**-130])
    rounded = round_to_tf32(values)
    assert rounded.tolist()[:4] == [1.0, 1.0 + 2**-10, 1.0 + 2**-10, -1.0]
    mantissa = rounded.view(torch.int32) & ((1 << 13) - 1)
    assert torch.all(mantissa == 0)
    inf = round_to_tf32(torch.tensor([float("inf"), float("nan")]))
    assert torch.isinf(inf[0]) and torch.isnan(inf[1])


def test_emulation_rounds_convolutions_forward_and_backward(tf32_everywhere):
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    with EmulatedTF32() as mode:
        out = torch.nn.functional.conv2d(x, w, padding=1)
        (grad_x,) = torch.autograd.grad(out.square().sum(), x)
    want = torch.nn.functional.conv2d(
        round_to_tf32(x.detach()), round_to_tf32(w.detach()), padding=1
    )
    assert torch.equal(out, want)
    assert mode.rounded_calls == 2  # the forward and the backward convolution
    exact = torch.autograd.grad(torch.nn.functional.conv2d(x, w, padding=1).square().sum(), x)[0]
    assert not torch.equal(grad_x, exact)
