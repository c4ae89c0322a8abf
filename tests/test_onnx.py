"""robustopt.onnx: networks exported by torch (both exporters) and hand-built graphs load as the same function;
unsupported graphs fail naming the node; the real VNN-COMP networks keep their published test accuracy."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from robustopt import models  # noqa: E402
from robustopt.layers import Normalize  # noqa: E402
from robustopt.onnx import load  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SUPPORTED = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Identity, Normalize, nn.BatchNorm1d, nn.BatchNorm2d)


class _View(nn.Module):
    """x.view(x.size(0), -1): the TorchScript exporter writes Shape / Gather / Concat / Reshape for it."""

    def forward(self, x):
        return x.view(x.size(0), -1)


def _export(model, example, path, dynamo, dynamic_batch=False):
    kwargs = {"input_names": ["x"], "output_names": ["y"], "dynamo": dynamo}
    if dynamic_batch and dynamo:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    elif dynamic_batch:
        kwargs["dynamic_axes"] = {"x": {0: "batch"}, "y": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(path), **kwargs)
    return path


def _torch_models():
    torch.manual_seed(0)
    return {
        "mlp": (models.mlp(784, [32, 16], 10), (1, 28, 28)),
        "cnn_small": (models.cnn_small(), (1, 28, 28)),
        "view_normalize_final_relu": (nn.Sequential(Normalize(0.1307, 0.3081), _View(), nn.Linear(784, 20), nn.ReLU(),
                                                    nn.Linear(20, 10), nn.ReLU()), (1, 28, 28)),
    }


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript", "ignore:The feature will be removed",
                            "ignore::FutureWarning")
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["mlp", "cnn_small", "view_normalize_final_relu"])
def test_torch_export_round_trip(tmp_path, name, dynamo):
    if dynamo:
        pytest.importorskip("onnxscript")
    model, shape = _torch_models()[name]
    model.eval()
    dynamic = name == "view_normalize_final_relu"
    path = _export(model, torch.rand(2 if dynamic else 1, *shape), tmp_path / f"{name}.onnx", dynamo, dynamic)
    loaded = load(path)
    assert loaded.input_shape == shape and not loaded.training
    assert all(isinstance(layer, SUPPORTED) for layer in loaded)
    x = torch.rand(7, *shape)
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    if name == "view_normalize_final_relu":
        assert isinstance(loaded[-1], nn.ReLU)  # the final ReLU is part of the function
        assert (got == 0).any()
    if name != "cnn_small":  # an MLP flattens first, so it also takes the flat batch
        assert isinstance(loaded[0], nn.Flatten)
        torch.testing.assert_close(loaded(x.reshape(7, -1)), got, rtol=0, atol=0)
    saved = tmp_path / f"{name}.pt"
    models.save(loaded, saved)  # only layers robustopt.models can save
    torch.testing.assert_close(models.load(saved)(x), got, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript", "ignore:The feature will be removed",
                            "ignore::torch.jit.TracerWarning")
def test_torchscript_opset_9_with_batchnorm_and_per_channel_normalization(tmp_path):
    """Opset 9 keeps Unsqueeze's axes as an attribute; BatchNorm1d stays a BatchNormalization node."""
    torch.manual_seed(1)
    model = nn.Sequential(Normalize(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.6, 0.7])),
                          nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), _View(), nn.Linear(4 * 6 * 6, 5),
                          nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).eval()
    with torch.no_grad():
        model[5].running_mean.uniform_(-1, 1)
        model[5].running_var.uniform_(0.5, 2)
    path = tmp_path / "bn.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.rand(2, 3, 6, 6),), str(path), dynamo=False, opset_version=9,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    loaded = load(path)
    assert [type(layer) for layer in loaded] == [Normalize, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear, nn.BatchNorm1d,
                                                 nn.ReLU, nn.Linear]
    x = torch.rand(9, 3, 6, 6)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------- hand-built graphs
def _graph(nodes, input_shape, initializers, output="y", dtype=TensorProto.FLOAT, opset=13):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", dtype, input_shape)],
        [helper.make_tensor_value_info(output, dtype, None)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float64 if dtype == TensorProto.DOUBLE else np.float32), k)
         for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _reference(model, x):
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


def _compare(proto, x, batch_axis=0, atol=1e-5):
    """The loaded model on the examples of x (ONNX layout) against onnx's reference evaluator."""
    loaded = load(proto)
    expected = _reference(proto, x)
    examples = torch.from_numpy(np.moveaxis(x, batch_axis, 0).copy())
    with torch.no_grad():
        got = loaded(examples).numpy()
    np.testing.assert_allclose(got, np.moveaxis(expected, batch_axis, 0).reshape(got.shape), rtol=1e-6, atol=atol)
    return loaded


def test_final_relu_stays_in_the_model():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "W2", "b2"], ["z"], transB=1), helper.make_node("Relu", ["z"], ["y"])]
    proto = _graph(nodes, ["batch", 6], {"W1": rng.normal(size=(8, 6)), "b1": rng.normal(size=8),
                                         "W2": rng.normal(size=(4, 8)), "b2": rng.normal(size=4) - 1})
    loaded = _compare(proto, rng.normal(size=(20, 6)).astype(np.float32))
    assert [type(layer) for layer in loaded] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    assert loaded.input_shape == (6,)


def test_sub_div_normalization_per_channel_and_flat():
    rng = np.random.default_rng(1)
    mean, std = rng.uniform(0.2, 0.6, size=(1, 2, 1, 1)), rng.uniform(0.5, 2.0, size=(1, 2, 1, 1))
    conv = [helper.make_node("Sub", ["x", "mean"], ["s"]), helper.make_node("Div", ["s", "std"], ["n"]),
            helper.make_node("Conv", ["n", "K", "kb"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    weights = {"mean": mean, "std": std, "K": rng.normal(size=(3, 2, 3, 3)), "kb": rng.normal(size=3),
               "W": rng.normal(size=(4, 3 * 4 * 4)), "b": rng.normal(size=4)}
    loaded = _compare(_graph(conv, [1, 2, 8, 8], weights), rng.uniform(size=(5, 2, 8, 8)).astype(np.float32))
    assert isinstance(loaded[0], Normalize) and loaded[0].mean.shape == (2,)  # one Normalize, per channel
    assert not isinstance(loaded[1], Normalize)
    # without a convolution the constants are stored flat and the model flattens its input first
    flat = [helper.make_node("Sub", ["x", "mean"], ["s"]), helper.make_node("Div", ["s", "std"], ["n"]),
            helper.make_node("Flatten", ["n"], ["f"]), helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    weights = {"mean": mean, "std": std, "W": rng.normal(size=(4, 2 * 8 * 8)), "b": rng.normal(size=4)}
    proto = _graph(flat, [1, 2, 8, 8], weights)
    x = rng.uniform(size=(5, 2, 8, 8)).astype(np.float32)
    loaded = _compare(proto, x)
    assert isinstance(loaded[0], nn.Flatten) and loaded[1].mean.shape == (128,)
    np.testing.assert_allclose(loaded(torch.from_numpy(x.reshape(5, -1))).detach().numpy(), _reference(proto, x),
                               rtol=1e-6, atol=1e-5)


def test_add_after_matmul_becomes_the_bias_and_scalar_sub_div_are_dropped_when_trivial():
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Sub", ["x", "zero"], ["s"]), helper.make_node("Div", ["s", "one"], ["n"]),
             helper.make_node("MatMul", ["n", "W"], ["m"]), helper.make_node("Add", ["bias", "m"], ["y"])]
    proto = _graph(nodes, [1, 5], {"zero": 0.0, "one": 1.0, "W": rng.normal(size=(5, 3)), "bias": rng.normal(size=3)})
    loaded = _compare(proto, rng.normal(size=(4, 5)).astype(np.float32))
    assert [type(layer) for layer in loaded] == [nn.Linear]


@pytest.mark.parametrize("data_first", [True, False])
@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_layouts(data_first, trans_a, trans_b):
    """Y = alpha op(A) op(B) + beta C with the data as A or as B; examples are rows or columns accordingly."""
    rng = np.random.default_rng(3)
    k, m, n = 6, 4, 5
    if data_first:  # op(X) is (n, k): X is (n, k), or (k, n) when transposed
        batch_axis, x_shape = (1, [k, n]) if trans_a else (0, [n, k])
        weight = rng.normal(size=(m, k) if trans_b else (k, m))
        inputs, c_shape, out_axis = ["x", "W", "C"], (m,), 0
    else:  # op(X) is (k, n): X is (k, n), or (n, k) when transposed
        batch_axis, x_shape = (0, [n, k]) if trans_b else (1, [k, n])
        weight = rng.normal(size=(k, m) if trans_a else (m, k))
        inputs, c_shape, out_axis = ["W", "x", "C"], (m, 1), 1
    node = helper.make_node("Gemm", inputs, ["z"], transA=trans_a, transB=trans_b, alpha=0.5, beta=2.0)
    proto = _graph([node, helper.make_node("Relu", ["z"], ["y"])], x_shape,
                   {"W": weight, "C": rng.normal(size=c_shape)})
    x = rng.normal(size=x_shape).astype(np.float32)
    loaded = load(proto)
    assert loaded.input_shape == (k,)
    with torch.no_grad():
        got = loaded(torch.from_numpy(np.moveaxis(x, batch_axis, 0).copy())).numpy()
    np.testing.assert_allclose(got, np.moveaxis(_reference(proto, x), out_axis, 0), rtol=1e-6, atol=1e-5)


def test_conv_padding_variants_and_batchnorm_double():
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "K"], ["c"], auto_pad="SAME_UPPER", strides=[1, 1], dilations=[2, 2]),
             helper.make_node("BatchNormalization", ["c", "g", "beta", "mu", "var"], ["n"], epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Conv", ["r", "K2", "b2"], ["c2"], auto_pad="VALID", strides=[2, 2]),
             helper.make_node("Reshape", ["c2", "shape"], ["f"]), helper.make_node("Identity", ["f"], ["y"])]
    weights = {"K": rng.normal(size=(3, 1, 3, 3)), "g": rng.uniform(0.5, 2, 3), "beta": rng.normal(size=3),
               "mu": rng.normal(size=3), "var": rng.uniform(0.5, 2, 3), "K2": rng.normal(size=(2, 3, 2, 2)),
               "b2": rng.normal(size=2)}
    # opset 15: onnx's reference evaluator computes BatchNormalization wrongly for opsets < 14 (onnxruntime
    # and the formula agree with robustopt there)
    graph = _graph(nodes, [1, 1, 7, 7], weights, dtype=TensorProto.DOUBLE, opset=15)
    graph.graph.initializer.append(numpy_helper.from_array(np.array([-1, 18], dtype=np.int64), "shape"))
    loaded = _compare(graph, rng.normal(size=(3, 1, 7, 7)), atol=1e-12)
    assert loaded[0].weight.dtype == torch.float64 and isinstance(loaded[1], nn.BatchNorm2d)
    asymmetric = _graph([helper.make_node("Conv", ["x", "K"], ["y"], pads=[0, 0, 1, 1])], [1, 1, 7, 7],
                        {"K": weights["K"]})
    with pytest.raises(ValueError, match="asymmetric padding"):
        load(asymmetric)


def test_unsupported_node_and_branches_are_named():
    rng = np.random.default_rng(5)
    weights = {"W": rng.normal(size=(3, 3)), "b": rng.normal(size=3)}
    sigmoid = [helper.make_node("Gemm", ["x", "W", "b"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
               helper.make_node("Sigmoid", ["a"], ["y"], name="squash")]
    with pytest.raises(ValueError, match=r"Sigmoid node 'squash' at position 2: unsupported ONNX node type .*Gemm"):
        load(_graph(sigmoid, [1, 3], weights))
    residual = [helper.make_node("Gemm", ["x", "W", "b"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
                helper.make_node("Add", ["a", "x"], ["y"])]
    with pytest.raises(ValueError, match=r"Add node at position 2: .*only chains"):
        load(_graph(residual, [1, 3], weights))
    reshape = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    graph = _graph(reshape, [1, 2, 3, 3], {})
    graph.graph.initializer.append(numpy_helper.from_array(np.array([1, 2, 9], dtype=np.int64), "shape"))
    with pytest.raises(ValueError, match=r"Reshape node at position 0: only a Reshape to a flat vector"):
        load(graph)
    with pytest.raises(ValueError, match="exactly one input"):
        load(helper.make_model(helper.make_graph([], "g", [], [])))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        load(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 definitely not protobuf \xff\xff")
    with pytest.raises(ValueError, match="bad.onnx"):
        load(bad)


# ------------------------------------------------------------------------------------- the VNN-COMP networks
@pytest.mark.parametrize("path, accuracy", [
    ("vnncomp2021_mnistfc/mnist-net_256x2.onnx", 0.9808),
    ("vnncomp2021_eran_mnist_relu_9_200/nets/mnist_relu_9_200.onnx", 0.9495),
])
def test_vnncomp_networks_keep_their_test_accuracy(path, accuracy):
    if not (SHARED / path).is_file() or not (SHARED / "mnist").is_dir():
        pytest.skip("../shared/data is not available")
    from robustopt.data import load_mnist
    X, y = load_mnist(root=SHARED / "mnist", split="test")
    model = load(SHARED / path)
    assert model.input_shape in ((784, 1), (1, 28, 28))
    with torch.no_grad():
        logits = model(torch.from_numpy(X))
    assert abs((logits.argmax(1).numpy() == y).mean() - accuracy) < 5e-5  # the README's full test set figure
    proto = onnx.load(str(SHARED / path))  # and the same function as onnx's reference evaluator on a few images
    name = proto.graph.input[0].name
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    for i in range(3):
        ref = ReferenceEvaluator(proto).run(None, {name: X[i].reshape(dims)})[0]
        np.testing.assert_allclose(logits[i].numpy(), ref.reshape(-1), rtol=1e-5, atol=1e-5)
