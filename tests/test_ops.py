import pytest
import torch
from torch import nn

from sgl_betty.genotypes import PRIMITIVES
from sgl_betty.search_space.ops import (
    OPS,
    DilConv,
    FactorizedReduce,
    SepConv,
    UnknownOperationError,
    Zero,
    build_op,
)

C = 4


def num_weights(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registry_holds_exactly_the_darts_primitives():
    assert set(OPS) == set(PRIMITIVES)
    assert len(PRIMITIVES) == 8


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("name", PRIMITIVES)
def test_every_op_keeps_channels_and_halves_resolution_at_stride_2(name, affine):
    x = torch.randn(2, C, 8, 8)
    assert OPS[name](C, 1, affine)(x).shape == (2, C, 8, 8)
    assert OPS[name](C, 2, affine)(x).shape == (2, C, 4, 4)


# Hand count at C=4: depthwise k*k*C + pointwise C*C per block; BN adds 2*C when affine.
@pytest.mark.parametrize(
    "name, affine, expected",
    [
        ("sep_conv_3x3", False, 2 * (9 * 4 + 16)),
        ("sep_conv_3x3", True, 2 * (9 * 4 + 16 + 8)),
        ("sep_conv_5x5", False, 2 * (25 * 4 + 16)),
        ("dil_conv_3x3", False, 9 * 4 + 16),
        ("dil_conv_5x5", True, 25 * 4 + 16 + 8),
        ("max_pool_3x3", True, 0),
        ("avg_pool_3x3", True, 0),
        ("none", True, 0),
    ],
)
def test_op_weight_counts_match_hand_count(name, affine, expected):
    assert num_weights(OPS[name](C, 1, affine)) == expected


def test_skip_connect_is_identity_at_stride_1_and_factorized_reduce_at_stride_2():
    x = torch.randn(2, C, 8, 8)
    assert torch.equal(OPS["skip_connect"](C, 1, False)(x), x)
    reduce = OPS["skip_connect"](C, 2, False)
    assert isinstance(reduce, FactorizedReduce)
    assert num_weights(reduce) == 2 * (C * C // 2)


def test_search_ops_have_no_affine_batchnorm_and_eval_ops_do():
    for name in PRIMITIVES:
        for stride in (1, 2):
            for module in OPS[name](C, stride, False).modules():
                if isinstance(module, nn.BatchNorm2d):
                    assert not module.affine
            for module in OPS[name](C, stride, True).modules():
                if isinstance(module, nn.BatchNorm2d):
                    assert module.affine


def test_zero_is_zero_with_the_strided_shape():
    x = torch.randn(2, C, 8, 8)
    assert torch.count_nonzero(Zero(1)(x)) == 0
    assert Zero(2)(x).shape == (2, C, 4, 4)


def test_avg_pool_does_not_count_padding():
    # With count_include_pad=True a corner of a constant image would average to 4/9.
    ones = torch.ones(1, C, 6, 6)
    assert torch.allclose(OPS["avg_pool_3x3"](C, 1, False)(ones), ones)


def test_factorized_reduce_reads_even_pixels_in_one_half_and_odd_pixels_in_the_other():
    reduce = FactorizedReduce(1, 2, affine=False).eval()
    with torch.no_grad():
        reduce.conv_even.weight.fill_(1.0)
        reduce.conv_odd.weight.fill_(1.0)
    x = torch.arange(36.0).reshape(1, 1, 6, 6) - 10.0
    relu_x = x.clamp(min=0)
    bn_scale = 1.0 / (1.0 + reduce.bn.eps) ** 0.5  # fresh running stats: mean 0, var 1
    out = reduce(x)
    assert torch.allclose(out[0, 0], relu_x[0, 0, ::2, ::2] * bn_scale)
    assert torch.allclose(out[0, 1], relu_x[0, 0, 1::2, 1::2] * bn_scale)


def test_factorized_reduce_rejects_odd_output_channels():
    with pytest.raises(ValueError, match="even"):
        FactorizedReduce(4, 3)


def receptive_offsets(op: nn.Module, size: int = 11) -> set[tuple[int, int]]:
    """Input pixels (relative to the centre) that the centre output depends on."""
    op = op.double().eval()  # eval: BN with running stats does not mix pixels
    for conv in op.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.uniform_(conv.weight, 0.5, 1.0)  # positive weights: no accidental cancelling
    x = torch.rand(1, C, size, size, dtype=torch.double, requires_grad=True)
    centre = size // 2
    op(x)[0, :, centre, centre].sum().backward()
    nonzero = x.grad.abs().sum(dim=(0, 1)).nonzero().tolist()
    return {(row - centre, col - centre) for row, col in nonzero}


def test_dil_conv_3x3_reads_a_dilation_2_grid():
    assert receptive_offsets(DilConv(C, C, 3, 1, 2, 2)) == {
        (dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2)
    }


def test_sep_conv_3x3_stacks_two_3x3_convs_into_a_5x5_field():
    assert receptive_offsets(SepConv(C, C, 3, 1, 1)) == {
        (dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
    }


def test_unknown_op_name_is_a_value_error_naming_it_and_the_known_ops():
    with pytest.raises(ValueError, match="sep_conv_4x4") as error:
        build_op("sep_conv_4x4", C, 1, False)
    for name in PRIMITIVES:
        assert name in str(error.value)
    # Still a KeyError too, so the registry keeps behaving like a dict.
    with pytest.raises(KeyError):
        OPS["conv_7x7"]
    assert isinstance(error.value, UnknownOperationError)
