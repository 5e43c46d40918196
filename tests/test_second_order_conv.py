"""``Conv2d`` (sgl_betty/search_space/second_order_conv.py): nn.Conv2d's numbers, first and
second order, without PyTorch's double backward of the convolution."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from sgl_betty import HypergradConfig, Learner, SGLConfig, build_sgl_engine
from sgl_betty.search_space import SearchNetwork
from sgl_betty.search_space.darts import Architecture
from sgl_betty.search_space.second_order_conv import (
    Conv2d,
    second_order_pass,
    use_second_order_convolutions,
)

# (in, out, kernel, stride, padding, dilation, groups, bias, input size): the DARTS convolutions
# (stem, ReLUConvBN, depthwise dilated and strided, pointwise, FactorizedReduce's stride-2 1x1
# on an odd input), plus a grouped one with a bias.
GEOMETRIES = [
    (3, 6, 3, 1, 1, 1, 1, False, 8),
    (4, 4, 3, 2, 1, 1, 4, False, 9),
    (4, 4, 5, 2, 4, 2, 4, False, 8),
    (4, 4, 3, 1, 2, 2, 4, False, 7),
    (4, 6, 1, 1, 0, 1, 1, False, 8),
    (4, 2, 1, 2, 0, 1, 1, False, 7),
    (4, 6, 3, 2, 1, 1, 2, True, 8),
]


def pair(geometry, dtype=torch.float32):
    """The same convolution as nn.Conv2d and as Conv2d (same weights), and an input."""
    c_in, c_out, k, stride, padding, dilation, groups, bias, size = geometry
    torch.manual_seed(0)
    native = nn.Conv2d(c_in, c_out, k, stride, padding, dilation, groups, bias).to(dtype)
    ours = use_second_order_convolutions(copy.deepcopy(native))
    x = torch.randn(2, c_in, size, size, dtype=dtype)
    return native, ours, x


def test_only_plain_convolutions_are_converted_and_parameters_stay():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 4, 3), nn.Linear(2, 2))
    before = {name: p for name, p in net.named_parameters()}
    use_second_order_convolutions(net)
    assert [type(m) for m in net] == [Conv2d, nn.ConvTranspose2d, nn.Linear]
    assert {name: p for name, p in net.named_parameters()} == before  # the same Parameters


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_forward_and_first_order_backward_are_nn_conv2d_bit_for_bit(geometry):
    native, ours, x = pair(geometry)
    results = []
    for conv in (native, ours):
        inp = x.clone().requires_grad_()
        with second_order_pass():
            out = conv(inp)
        out.mul(torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out, inp.grad] + [p.grad for p in conv.parameters()])
    with second_order_pass():
        assert type(ours(x).grad_fn).__name__ == "_ConvolutionBackward"
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_second_derivatives_pass_gradgradcheck(geometry):
    """Against finite differences of its own first derivatives (float64)."""
    _, ours, x = pair(geometry, torch.float64)
    params = {name: p.detach().clone().requires_grad_() for name, p in ours.named_parameters()}

    def conv(inp, *values):
        # tanh: a nonlinearity, so that the Hessian in the input is not zero.
        with second_order_pass():
            return torch.tanh(functional_call(ours, dict(zip(params, values)), (inp,)))

    inputs = (x.requires_grad_(), *params.values())
    assert torch.autograd.gradgradcheck(conv, inputs, eps=1e-6, atol=1e-5)


def stack(conv_cls):
    """Convolutions of every DARTS kind between nonlinearities, BN and an 'architecture' scale."""
    torch.manual_seed(1)
    net = nn.ModuleList(
        [
            nn.Conv2d(3, 4, 3, padding=1, bias=False),
            nn.Conv2d(4, 4, 3, 2, 1, groups=4, bias=False),
            nn.Conv2d(4, 4, 5, 1, 4, 2, groups=4, bias=False),
            nn.Conv2d(4, 6, 1, bias=False),
            nn.BatchNorm2d(6, affine=False),
            nn.Conv2d(6, 3, 1, stride=2, bias=False),
        ]
    ).double()
    if conv_cls is Conv2d:
        use_second_order_convolutions(net)
    return net


def run_stack(net, x, a):
    h = net[0](x)
    h = net[1](torch.relu(h)) * a[0]
    h = net[2](torch.tanh(h)) * a[1] + h
    h = net[4](net[3](h))
    return net[5](torch.relu(h[:, :, 1:, 1:])).pow(2).mean()


def second_order_products(net, forward, arch):
    weights = list(net.parameters())
    with second_order_pass():
        loss = forward()
    grads = torch.autograd.grad(loss, weights, create_graph=True)
    torch.manual_seed(2)
    v = [torch.randn_like(g) for g in grads]
    hvp = torch.autograd.grad(grads, weights, grad_outputs=v, retain_graph=True)
    mixed = torch.autograd.grad(grads, arch, grad_outputs=v, allow_unused=True)
    return [g.detach() for g in grads], list(hvp), list(mixed)


def assert_close_lists(ours, reference, rtol):
    for a, b in zip(ours, reference):
        scale = b.abs().max().clamp(min=1e-30)
        assert (a - b).abs().max() / scale < rtol


def test_hessian_vector_and_mixed_products_equal_pytorchs_on_a_conv_stack():
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    a = torch.tensor([0.7, -1.3], dtype=torch.float64, requires_grad=True)
    results = [
        second_order_products(net, lambda net=net: run_stack(net, x, a), [a])
        for net in (stack(nn.Conv2d), stack(Conv2d))
    ]
    for reference, ours in zip(*results):
        assert_close_lists(ours, reference, 1e-12)
    assert results[0][2][0].abs().min() > 0  # a real mixed product, not zeros


def test_hessian_vector_and_mixed_products_equal_pytorchs_on_the_supernet():
    """The real DARTS supernet (every op, both cell types), weights at their random initial
    values (far from any optimum), float64."""
    torch.manual_seed(3)
    ours = SearchNetwork(4, 10, 3, steps=2, multiplier=2).double()
    native = copy.deepcopy(ours)
    for module in native.modules():
        if type(module) is Conv2d:
            module.__class__ = nn.Conv2d
    assert not any(type(m) is nn.Conv2d for m in ours.modules())
    arch = Architecture(steps=2, multiplier=2).double()
    with torch.no_grad():
        for p in arch.parameters():
            p.normal_()  # away from uniform: the softmax weights differ per op
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 3, 5, 7])
    alphas = list(arch.parameters())
    results = [
        second_order_products(net, lambda net=net: F.cross_entropy(net(x, arch()), y), alphas)
        for net in (native, ours)
    ]
    for reference, got in zip(*results):
        assert_close_lists(got, reference, 1e-10)


def weight_gradient_convolutions(net, forward, targets) -> tuple[int, int]:
    """How many convolutions a product into ``targets`` runs whose result is the size of a
    kernel (second-order weight-gradient terms; the stack's activations are never that small),
    and how many it runs."""
    kernels = {tuple(m.weight.shape[2:]) for m in net.modules() if isinstance(m, nn.Conv2d)}
    found = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func._overloadpacket is torch.ops.aten.convolution:
                found.append(tuple(out.shape[2:]))
            return out

    weights = list(net.parameters())
    with second_order_pass():
        loss = forward()
    grads = torch.autograd.grad(loss, weights, create_graph=True)
    with Watch():
        torch.autograd.grad(grads, targets, grad_outputs=[torch.ones_like(g) for g in grads])
    return sum(1 for size in found if size in kernels), len(found)


def test_a_mixed_product_into_the_architecture_computes_no_weight_gradients():
    x = torch.randn(2, 3, 15, 15, dtype=torch.float64)  # activations 15, 8, 7 and 4 pixels
    a = torch.tensor([0.7, -1.3], dtype=torch.float64, requires_grad=True)
    native, ours = stack(nn.Conv2d), stack(Conv2d)
    # PyTorch's double backward computes them, depthwise ones group by group (the negative
    # control) ...
    weight_terms, _ = weight_gradient_convolutions(native, lambda: run_stack(native, x, a), [a])
    assert weight_terms > 4
    # ... ours none.
    weight_terms, convolutions = weight_gradient_convolutions(
        ours, lambda: run_stack(ours, x, a), [a]
    )
    assert weight_terms == 0 and convolutions > 0


def test_it_is_nn_conv2d_outside_a_second_order_pass_under_autocast_and_without_grad():
    native, ours, x = pair(GEOMETRIES[1])
    inp = x.clone().requires_grad_()
    assert type(ours(inp).grad_fn).__name__ == "ConvolutionBackward0"
    with second_order_pass():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_native, out_ours = native(inp), ours(inp)
        assert out_ours.dtype == torch.bfloat16 and torch.equal(out_native, out_ours)
        assert type(out_ours.grad_fn).__name__ == "ConvolutionBackward0"
        with torch.no_grad():
            assert torch.equal(ours(x), native(x))


def tiny_group(num):
    torch.manual_seed(0)
    return [
        Learner(
            Architecture(steps=2, multiplier=2, init_scale=0.5).double(),
            SearchNetwork(4, 5, 3, steps=2, multiplier=2).double() if num > 1 else None,
            SearchNetwork(4, 5, 3, steps=2, multiplier=2).double(),
        )
        for _ in range(num)
    ]


def step_hypergradients(num, hypergrad):
    """One step's architecture hypergradients, and how many ops it ran in ``Conv2d``'s
    backward: recording a graph, and in all."""
    g = torch.Generator().manual_seed(1)

    def batch():
        return torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)

    train = [(batch(), torch.randint(0, 5, (4,), generator=g))]
    val = [(batch(), torch.randint(0, 5, (4,), generator=g))]
    config = SGLConfig(hypergrad=hypergrad, lam=0.5)
    engine = build_sgl_engine(tiny_group(num), train, val, [batch()], config, device="cpu")
    recording, ours = [], []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if type(torch._C._current_autograd_node()).__name__ == "_ConvolutionBackward":
                ours.append(func)
                if torch.is_grad_enabled():
                    recording.append(func)
            return func(*args, **(kwargs or {}))

    with Watch():
        engine.step()
    found = torch.cat([g.flatten() for k in range(num) for g in engine.last_hypergrad[k]])
    return found, len(recording), len(ours)


SECOND_ORDER_TYPES = [
    HypergradConfig(type="neumann", neumann_alpha=0.05),
    HypergradConfig(type="cg", cg_iterations=2),
    HypergradConfig(type="unrolled", unrolled_exact=True),
]


@pytest.mark.parametrize("hypergrad", SECOND_ORDER_TYPES, ids=lambda h: h.type)
@pytest.mark.parametrize("num", [1, 2])
def test_the_exact_solvers_take_this_path_with_pytorchs_numbers(num, hypergrad, monkeypatch):
    ours, recorded, _ = step_hypergradients(num, hypergrad)
    assert recorded > 0
    monkeypatch.setattr(Conv2d, "forward", nn.Conv2d.forward)  # PyTorch's double backward
    reference, _, none = step_hypergradients(num, hypergrad)
    assert none == 0
    assert torch.allclose(ours, reference, rtol=1e-10, atol=1e-14)
    assert reference.abs().max() > 0


@pytest.mark.parametrize("kind", ["first_order", "darts", "unrolled"])
def test_first_order_and_finite_difference_steps_never_take_it(kind):
    """Their passes are nn.Conv2d's (no Python autograd function in the way)."""
    _, _, calls = step_hypergradients(2, HypergradConfig(type=kind))
    assert calls == 0
