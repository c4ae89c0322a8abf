"""The canonical network form: same function as the torch model, exact transposes, spec folding."""
import numpy as np
import pytest
import torch
from torch import nn

from robustopt.layers import Normalize
from robustopt.verify import network
from robustopt.verify.methods import check_intermediate, get_method, run_method
from robustopt.sets import Ball


def _randomize_bn(bn, gen):
    bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
    bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
    bn.weight.data.copy_(torch.randn(bn.num_features, generator=gen))
    bn.bias.data.copy_(torch.randn(bn.num_features, generator=gen))


def _models():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    bn1, bn2a, bn2b = nn.BatchNorm1d(7), nn.BatchNorm2d(3), nn.BatchNorm2d(4)
    for bn in (bn1, bn2a, bn2b):
        _randomize_bn(bn, gen)
    mlp = nn.Sequential(Normalize(0.3, 0.2), nn.Linear(5, 7), bn1, nn.ReLU(),
                        nn.Sequential(nn.Linear(7, 6), nn.Identity(), nn.ReLU(), nn.ReLU()), nn.Linear(6, 3))
    conv = nn.Sequential(Normalize([0.1, 0.5], [0.3, 0.2]), nn.Conv2d(2, 3, 3, padding=1), bn2a, nn.ReLU(),
                         nn.Conv2d(3, 4, 3, stride=2, padding="valid"), nn.ReLU(), bn2b,
                         nn.Conv2d(4, 4, 2, padding="same", dilation=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 2 * 2, 5), nn.Linear(5, 4), nn.ReLU())
    flat_first = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    return [(mlp.eval(), (5,)), (conv.eval(), (2, 6, 6)), (flat_first, (4,))]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("case", range(3))
def test_forward_matches_model(case):
    model, shape = _models()[case]
    net = network(model, input_shape=shape)
    x = torch.rand(11, *shape)
    expected = model.double()(x.double())
    assert net.dtype == torch.float64
    torch.testing.assert_close(net(x), expected, rtol=1e-10, atol=1e-10)
    assert len(net.affine) - 1 + net.ends_with_relu == len(net.relu_sizes)


def test_structure_and_trailing_relu():
    mlp, conv, _ = (m for m, _ in _models())
    net = network(mlp)  # input shape inferred from the first Linear (through a scalar Normalize)
    assert net.in_shape == (5,) and not net.ends_with_relu
    assert [type(op).__name__ for op in net.affine] == ["Linear", "Linear", "Linear"]  # Normalize, BN folded
    cnet = network(conv, input_shape=(2, 6, 6))
    assert cnet.ends_with_relu and cnet.relu_sizes == [3 * 36, 4 * 4, 16, 4]
    # the per-channel Normalize before a padded conv is not folded (not exact at the borders); BN after a conv is
    assert type(cnet.affine[0]).__name__ == "Chain" and type(cnet.affine[1]).__name__ == "Conv2d"
    # BN after a ReLU, before a padded conv, is kept; two consecutive Linear layers are merged (conv->linear too)
    assert type(cnet.affine[2]).__name__ == "Chain" and type(cnet.affine[3]).__name__ == "Linear"


@pytest.mark.parametrize("case", range(3))
def test_transpose_abs_and_matrices_are_consistent(case):
    model, shape = _models()[case]
    net = network(model, input_shape=shape)
    gen = torch.Generator().manual_seed(1)
    for op in net.affine:
        x = torch.randn(3, op.in_features, generator=gen, dtype=torch.float64)
        y = torch.randn(3, 2, op.out_features, generator=gen, dtype=torch.float64)
        # <y, W x> = <W^T y, x>
        torch.testing.assert_close(torch.einsum("nro,no->nr", y, op.linear(x)),
                                   torch.einsum("nri,ni->nr", op.transpose(y), x))
        dense = op.dense()
        torch.testing.assert_close(op.linear(x), x @ dense.T)
        np.testing.assert_allclose(op.scipy().toarray(), dense.numpy(), atol=1e-12)
        r = torch.rand(3, op.in_features, generator=gen, dtype=torch.float64)
        assert (op.abs_forward(r) >= (r @ dense.abs().T) - 1e-12).all()  # exact or sound (Chain)


def test_conv_scipy_with_groups_stride_dilation():
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2).double()
    net = network(nn.Sequential(conv), input_shape=(4, 7, 7))
    op = net.affine[0]
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    np.testing.assert_allclose(op.scipy().toarray() @ x.flatten(1).numpy().T + op.bias.numpy()[:, None],
                               conv(x).flatten(1).detach().numpy().T, atol=1e-12)


def test_spec_folding_equals_C_times_f():
    for model, shape in _models():
        net = network(model, input_shape=shape)
        x = torch.rand(4, *shape, dtype=torch.float64)
        k = net.out_features
        C = torch.randn(4, 3, k, dtype=torch.float64)
        folded = net.with_spec(C)
        assert not folded.ends_with_relu and folded.batch_size == 4
        torch.testing.assert_close(folded(x), torch.einsum("nmk,nk->nm", C, net(x)))
        shared = net.with_spec(C[0])
        torch.testing.assert_close(shared(x), net(x) @ C[0].T)
        W, b = folded.matrices(example=2)[-1]
        assert W.shape == (3, folded.affine[-1].in_features) and b.shape == (3,)


def test_unsupported_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="supports Linear, Conv2d, ReLU"):
        network(nn.Sequential(nn.Linear(3, 3), nn.Tanh()))
    with pytest.raises(ValueError, match="MaxPool2d"):
        network(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2)), input_shape=(1, 6, 6))
    with pytest.raises(ValueError, match="input_shape"):
        network(nn.Sequential(nn.Conv2d(1, 2, 3)))
    with pytest.raises(ValueError, match="Flatten missing"):
        network(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(32, 2)), input_shape=(1, 6, 6))
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="eval mode"):
        network(nn.Sequential(nn.Linear(2, 3), bn).train())
    net = network(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="takes examples of shape"):
        net.flatten_input(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="C must be"):
        net.with_spec(torch.zeros(4, 1, 3))


def test_method_registry_and_option_checks():
    net = network(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))).with_spec(torch.eye(2))
    x = torch.rand(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="method must be one of"):
        get_method("deeppoly")
    with pytest.raises(ValueError, match="intermediate must be a list of 1"):
        check_intermediate(net, [], 4)
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        check_intermediate(net, [(torch.zeros(4, 2), torch.zeros(4, 2))], 4)
    with pytest.raises(ValueError, match="outside the box"):
        run_method("ibp", net, x + 2, Ball(0.1))


def test_keep_graph_makes_bounds_differentiable_in_the_weights():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(2).eval()
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), bn, nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    x = torch.rand(4, 1, 4, 4)
    detached = network(model, input_shape=(1, 4, 4))
    assert not any(op.bias.requires_grad for op in detached.affine)
    net = network(model, input_shape=(1, 4, 4), dtype=torch.float32, keep_graph=True)
    lower = run_method("crown", net.with_spec(torch.eye(3)), x, Ball(0.1), compute_upper=False).lower
    lower.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
