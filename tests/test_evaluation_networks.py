import pytest
import torch
import torch.nn.functional as F

from sgl_betty.evaluation import (
    AuxiliaryHeadCIFAR,
    EvalCell,
    NetworkCIFAR,
    NetworkImageNet,
    drop_path,
)
from sgl_betty.genotypes import PUBLISHED, Genotype
from sgl_betty.params import count_parameters_m
from sgl_betty.search_space.ops import ReLUConvBN


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def count(model) -> int:
    return round(count_parameters_m(model) * 1e6)


# Published sizes (millions, auxiliary head left out): DARTS (Liu et al. 2019), PC-DARTS
# (Xu et al. 2020), P-DARTS (Chen et al. 2019). CIFAR-10: C=36, 20 cells; ImageNet: C=48,
# 14 cells, 1000 classes.
PUBLISHED_SIZES = [
    ("DARTS_V2", 3.3, 4.7),
    ("PC_DARTS_cifar", 3.6, None),
    ("PC_DARTS_image", None, 5.3),
    ("PDARTS", 3.4, 4.9),
]


@pytest.mark.parametrize("name, cifar10_m, imagenet_m", PUBLISHED_SIZES)
def test_sizes_of_published_cells_match_the_papers(name, cifar10_m, imagenet_m):
    if cifar10_m is not None:
        assert round(count_parameters_m(NetworkCIFAR(36, 10, 20, True, name)), 1) == cifar10_m
    if imagenet_m is not None:
        imagenet = NetworkImageNet(48, 1000, 14, True, name)
        assert round(count_parameters_m(imagenet), 1) == imagenet_m


def test_exact_darts_v2_sizes():
    # The figures the reference code prints for DARTS_V2 ("param size = ...MB").
    assert count(NetworkCIFAR(36, 10, 20, True, "DARTS_V2")) == 3_349_342
    assert count(NetworkImageNet(48, 1000, 14, True, "DARTS_V2")) == 4_718_752


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_cifar100_network_differs_from_cifar10_only_by_its_classifier(name):
    # The last cell outputs 4 nodes x 4C = 576 channels at C=36; the classifier gains
    # 90 rows of 576 weights + 1 bias. The auxiliary head grows too but is not counted.
    cifar10 = count(NetworkCIFAR(36, 10, 20, True, name))
    cifar100 = count(NetworkCIFAR(36, 100, 20, True, name))
    assert cifar100 - cifar10 == (100 - 10) * (576 + 1) == 51_930


def test_auxiliary_head_is_left_out_of_the_count():
    with_head = NetworkCIFAR(36, 10, 20, True, "DARTS_V2")
    without_head = NetworkCIFAR(36, 10, 20, False, "DARTS_V2")
    assert count(with_head) == count(without_head)
    # Head on 576 channels: 1x1 conv to 128 + BN, 2x2 conv to 768 + BN, linear to 10 classes.
    head_size = 576 * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * 10 + 10
    total = sum(p.numel() for p in with_head.parameters())
    assert total - count(with_head) == head_size == 476_426


def test_tiny_cifar_network_trains_with_its_auxiliary_head():
    # 3 cells: reductions at cells 1 and 2, head after cell 2 sees 32 / 4 = 8x8 maps.
    net = NetworkCIFAR(4, 10, 3, True, "DARTS_V2")
    net.drop_path_prob = 0.2
    net.train()
    logits, logits_aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == logits_aux.shape == (2, 10)
    y = torch.tensor([1, 7])
    (F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(logits_aux, y)).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
    assert net.auxiliary_head.classifier.weight.grad.abs().sum() > 0


def test_tiny_imagenet_network_trains_with_its_auxiliary_head():
    # Stems take 224 to 28; reductions to 14 and 7; the head turns 7x7 into 2x2 into 1x1.
    net = NetworkImageNet(4, 5, 3, True, "PC_DARTS_image").train()
    logits, logits_aux = net(torch.randn(2, 3, 224, 224))
    assert logits.shape == logits_aux.shape == (2, 5)
    (logits.sum() + logits_aux.sum()).backward()
    assert net.stem0[0].weight.grad.abs().sum() > 0
    assert net.auxiliary_head.classifier.weight.grad.abs().sum() > 0


def test_imagenet_network_without_head_runs_on_small_images():
    net = NetworkImageNet(4, 5, 3, False, "PDARTS").train()
    logits, logits_aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5) and logits_aux is None


def test_eval_mode_and_headless_networks_return_no_auxiliary_logits():
    net = NetworkCIFAR(4, 10, 3, True, "DARTS_V2")
    net.eval()
    logits, logits_aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and logits_aux is None
    headless = NetworkCIFAR(4, 10, 3, False, "DARTS_V2").train()
    assert headless(torch.randn(2, 3, 16, 16))[1] is None
    assert not hasattr(headless, "auxiliary_head")


def test_eval_cell_uses_affine_batchnorm():
    cell = EvalCell(PUBLISHED["DARTS_V2"], 16, 16, 8, reduction=False, reduction_prev=False)
    assert isinstance(cell.preprocess0, ReLUConvBN)
    assert all(bn.affine for bn in cell.modules() if isinstance(bn, torch.nn.BatchNorm2d))


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    x = torch.ones(4000, 2, 3, 3)
    dropped = drop_path(x, 0.25)
    per_sample = dropped.flatten(1)
    # Each sample is either all zero or all 1 / 0.75.
    assert torch.all(
        (per_sample == 0).all(dim=1) | torch.isclose(per_sample, torch.tensor(4 / 3)).all(dim=1)
    )
    kept_fraction = (per_sample[:, 0] > 0).float().mean()
    assert abs(kept_fraction - 0.75) < 0.03
    assert torch.equal(drop_path(x, 0.0), x)


# Every node pairs an identity edge with a weighted op. With drop_prob close to 1 (fixed seed)
# every weighted op is dropped in every sample, so node outputs are exactly the identity inputs:
# node 2 = s0', node 3 = s1', node 4 = node 2 = s0', node 5 = node 3 = s1'.
IDENTITY_PAIRED = Genotype(
    normal=[
        ("skip_connect", 0),
        ("sep_conv_3x3", 1),
        ("skip_connect", 1),
        ("dil_conv_5x5", 0),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
        ("skip_connect", 3),
        ("sep_conv_5x5", 4),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("skip_connect", 1)] * 4,
    reduce_concat=[2, 3, 4, 5],
)


def test_drop_path_never_drops_an_identity_edge():
    cell = EvalCell(IDENTITY_PAIRED, 8, 8, 4, reduction=False, reduction_prev=False).train()
    s0, s1 = torch.randn(3, 8, 6, 6), torch.randn(3, 8, 6, 6)
    out = cell(s0, s1, drop_prob=1.0 - 1e-6)
    s0_pre, s1_pre = cell.preprocess0(s0), cell.preprocess1(s1)
    assert torch.equal(out, torch.cat([s0_pre, s1_pre, s0_pre, s1_pre], dim=1))
    # Without drop path the weighted ops do contribute.
    assert not torch.allclose(cell(s0, s1, drop_prob=0.0), out)


def test_drop_path_is_off_in_eval_mode():
    cell = EvalCell(IDENTITY_PAIRED, 8, 8, 4, reduction=False, reduction_prev=False).eval()
    s0, s1 = torch.randn(3, 8, 6, 6), torch.randn(3, 8, 6, 6)
    assert torch.equal(cell(s0, s1, drop_prob=0.9), cell(s0, s1, drop_prob=0.0))


def test_a_malformed_genotype_is_a_clear_error_before_any_layer_is_built():
    darts_v2 = PUBLISHED["DARTS_V2"]
    broken = darts_v2._replace(normal=[*darts_v2.normal[:7], ("sep_conv_9x9", 3)])
    with pytest.raises(ValueError, match=r"genotype.normal\[7\].*unknown operation 'sep_conv_9x9'"):
        NetworkCIFAR(36, 10, 20, True, broken)
    with pytest.raises(ValueError, match="no published genotype named 'DARTS_V9'"):
        NetworkImageNet(48, 1000, 14, True, "DARTS_V9")


def test_auxiliary_head_cifar_expects_8x8_maps():
    head = AuxiliaryHeadCIFAR(16, 10).eval()
    assert head(torch.randn(2, 16, 8, 8)).shape == (2, 10)
