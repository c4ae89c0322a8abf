"""robustopt.models: builders, training, and a save / load that never runs code from the file."""
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustopt import models
from robustopt.data import load_digits
from robustopt.layers import Normalize


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- builders
def test_mlp_layers_and_shapes():
    model = models.mlp(64, (32, 16), 10)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert model(torch.rand(5, 64)).shape == (5, 10)
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)  # images are flattened
    linear = models.mlp(4, (), 3)
    assert [type(m).__name__ for m in linear] == ["Flatten", "Linear"]


@pytest.mark.parametrize("side, flat", [(28, 32 * 7 * 7), (8, 32 * 2 * 2), (32, 32 * 8 * 8)])
def test_cnn_small_is_the_certifiable_architecture(side, flat):
    model = models.cnn_small(in_channels=3, side=side, classes=7)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(16, (4, 4), (2, 2)), (32, (4, 4), (2, 2))]
    dense = [m for m in model if isinstance(m, nn.Linear)]
    assert (dense[0].in_features, dense[0].out_features, dense[1].out_features) == (flat, 100, 7)
    assert model(torch.rand(2, 3, side, side)).shape == (2, 7)


@pytest.mark.parametrize("side, flat", [(28, 64 * 7 * 7), (8, 64 * 2 * 2), (7, 64 * 2 * 2)])
def test_cnn_tutorial_is_the_tutorials_four_conv_net(side, flat):
    model = models.cnn_tutorial(in_channels=1, side=side, classes=10)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (32, (3, 3), (1, 1), (1, 1)), (32, (3, 3), (2, 2), (1, 1)), (64, (3, 3), (1, 1), (1, 1)),
        (64, (3, 3), (2, 2), (1, 1))]
    dense = [m for m in model if isinstance(m, nn.Linear)]
    assert (dense[0].in_features, dense[0].out_features, dense[1].out_features) == (flat, 100, 10)
    assert model(torch.rand(2, 1, side, side)).shape == (2, 10)


def test_normalization_layer_is_applied_to_raw_inputs():
    torch.manual_seed(0)
    plain = models.mlp(4, (8,), 3)
    torch.manual_seed(0)
    normed = models.mlp(4, (8,), 3, normalize=(0.5, 0.25))
    assert isinstance(normed[1], Normalize)
    x = torch.rand(6, 4)
    torch.testing.assert_close(normed(x), plain((x - 0.5) / 0.25))
    cnn = models.cnn_small(3, 8, 10, normalize=Normalize([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]))
    assert isinstance(cnn[0], Normalize) and cnn(torch.rand(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("call, match", [
    (lambda: models.mlp(64, 32, 10), "hidden"),
    (lambda: models.mlp(64, (32,), 1), "classes"),
    (lambda: models.mlp(0, (32,), 10), "in_features"),
    (lambda: models.cnn_small(side=2), "side"),
    (lambda: models.mlp(4, (3,), 2, normalize="zscore"), "normalize"),
])
def test_builders_reject_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------- fit
@pytest.fixture(scope="module")
def digits():
    return load_digits(split="train")


def test_fit_learns_digits_and_reports_history(digits):
    X, y = digits
    torch.manual_seed(0)
    model = models.mlp(64, (32,), 10)
    history = models.fit(model, X, y, epochs=8, lr=3e-3, batch_size=64, progress=False)
    assert set(history) >= {"loss", "accuracy", "device", "seconds", "epochs"}
    assert len(history["loss"]) == len(history["accuracy"]) == 8
    assert history["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] > 0.9
    assert not model.training
    with torch.no_grad():
        accuracy = (model(torch.as_tensor(X)).argmax(1).numpy() == y).mean()
    assert accuracy > 0.9


def test_fit_numpy_and_torch_inputs_agree_and_sgd_works(digits):
    X, y = digits
    X, y = X[:256], y[:256]
    runs = []
    for data in [(X, y), (torch.as_tensor(X), torch.as_tensor(y))]:
        torch.manual_seed(1)
        model = models.mlp(64, (16,), 10)
        runs.append(models.fit(model, *data, epochs=2, batch_size=32, progress=False, device="cpu", seed=3))
    assert runs[0]["loss"] == pytest.approx(runs[1]["loss"], rel=1e-6)
    torch.manual_seed(1)
    sgd = models.fit(models.mlp(64, (16,), 10), X, y, epochs=3, lr=0.05, optimizer="sgd", progress=False)
    assert sgd["loss"][-1] < sgd["loss"][0]


def test_fit_cnn_on_images():
    X, y = load_digits(split="train", flatten=False)
    torch.manual_seed(0)
    model = models.cnn_small(1, 8, 10)
    history = models.fit(model, X[:512], y[:512], epochs=3, lr=3e-3, progress=False)
    assert history["loss"][-1] < history["loss"][0]
    with pytest.raises(ValueError, match="flatten=False"):
        models.fit(models.cnn_small(1, 8, 10), X[:8].reshape(8, -1), y[:8], epochs=1, progress=False)


@pytest.mark.parametrize("mutate, match", [
    (lambda X, y: (X, y[:-1]), "y"),
    (lambda X, y: (X, y + 10), "out of range"),
    (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), y), "NaN"),
    (lambda X, y: (X.astype(np.int64), y), "floating"),
    (lambda X, y: (X, y.astype(np.float32)), "integer"),
])
def test_fit_rejects_bad_data(digits, mutate, match):
    X, y = digits
    X, y = mutate(X[:32], y[:32])
    with pytest.raises(ValueError, match=match):
        models.fit(models.mlp(64, (8,), 10), X, y, epochs=1, progress=False)


def test_fit_rejects_bad_options(digits):
    X, y = digits
    for kwargs, match in [({"optimizer": "lbfgs"}, "optimizer"), ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"),
                          ({"batch_size": 0}, "batch_size")]:
        with pytest.raises(ValueError, match=match):
            models.fit(models.mlp(64, (8,), 10), X[:16], y[:16], progress=False, **kwargs)


# ---------------------------------------------------------------------------------------------- save / load
def _every_layer_model(dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(
        Normalize([0.1, 0.2], [0.3, 0.4]),
        nn.Sequential(nn.Conv2d(2, 4, 3, stride=1, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Conv2d(4, 3, (2, 3), stride=(2, 1), padding=0, bias=False),
        nn.Identity(),
        nn.Flatten(),
        nn.Linear(3 * 3 * 4, 12), nn.BatchNorm1d(12), nn.ReLU(),
        nn.Linear(12, 5),
    ).to(dtype)
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        model(torch.rand(16, 2, 6, 6, dtype=dtype))
    return model.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_save_load_round_trip_every_supported_layer(tmp_path, dtype):
    model = _every_layer_model(dtype)
    path = tmp_path / "model.pt"
    models.save(model, path)
    loaded = models.load(path)
    assert isinstance(loaded, nn.Sequential) and not loaded.training
    assert not any(isinstance(m, nn.Sequential) for m in loaded)  # nested Sequentials are flattened
    assert next(loaded.parameters()).dtype == dtype
    x = torch.rand(7, 2, 6, 6, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_round_trip_of_builders_and_trained_model(tmp_path, digits):
    X, y = digits
    for model in [models.mlp(64, (16, 16), 10, normalize=(0.5, 0.5)), models.cnn_small(1, 28, 10)]:
        path = tmp_path / "m.pt"
        models.save(model, str(path))
        shape = (3, 64) if isinstance(model[1], Normalize) else (3, 1, 28, 28)
        x = torch.rand(*shape)
        with torch.no_grad():
            torch.testing.assert_close(models.load(path)(x), model(x), rtol=0, atol=0)


ONNX_NETS = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("name", ["vnncomp2021_mnistfc/mnist-net_256x2.onnx",
                                  "vnncomp2021_eran_mnist_relu_9_200/nets/mnist_relu_9_200.onnx"])
def test_round_trip_of_onnx_loaded_networks(tmp_path, name):
    path = ONNX_NETS / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    pytest.importorskip("onnx")
    onnx_load = pytest.importorskip("robustopt.onnx").load
    model = onnx_load(path)
    models.save(model, tmp_path / "net.pt")
    loaded = models.load(tmp_path / "net.pt")
    assert loaded.input_shape == model.input_shape
    assert [type(m) for m in loaded] == [type(m) for m in model]
    x = torch.rand(4, *model.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_save_rejects_unsupported_models(tmp_path):
    with pytest.raises(ValueError, match="Tanh.*supported: Linear, Conv2d"):
        models.save(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="nn.Sequential"):
        models.save(nn.Linear(2, 2), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="track_running_stats"):
        models.save(nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)), tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_foreign_files_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": models.FORMAT, "version": 1, "payload": _Payload(str(marker))}, evil)
    plain_pickle = tmp_path / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps(_Payload(str(marker))))
    whole_module = tmp_path / "module.pt"
    torch.save(models.mlp(4, (3,), 2), whole_module)
    state_only = tmp_path / "state.pt"
    torch.save(models.mlp(4, (3,), 2).state_dict(), state_only)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a model" * 10)
    for path in [evil, plain_pickle, whole_module, state_only, garbage]:
        with pytest.raises(ValueError, match="not a robustopt model file"):
            models.load(path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="does not exist"):
        models.load(tmp_path / "missing.pt")


def _tamper(tmp_path, change):
    path = tmp_path / "model.pt"
    models.save(models.mlp(4, (3,), 2), path)
    blob = torch.load(path, weights_only=True)
    change(blob)
    torch.save(blob, path)
    return path


@pytest.mark.parametrize("change, match", [
    (lambda b: b["layers"].append({"type": "os.system", "command": "true"}), "'os.system' is not supported"),
    (lambda b: b["layers"][1].update(in_features=-4), "in_features"),
    (lambda b: b["layers"][1].update(in_features="4"), "in_features"),
    (lambda b: b["layers"][1].update(bias="yes"), "bias"),
    (lambda b: b["state_dict"].update({"1.weight": torch.zeros(5, 4)}), "shape"),
    (lambda b: b["state_dict"].update({"9.extra": torch.zeros(1)}), "unexpected"),
    (lambda b: b["state_dict"].pop("3.bias"), "missing"),
    (lambda b: b["state_dict"].update({"3.bias": [0.0, 0.0]}), "tensors"),
    (lambda b: b.update(version=99), "version"),
    (lambda b: b.update(dtype="complex128"), "dtype"),
    (lambda b: b.update(layers=[]), "layers"),
])
def test_tampered_files_give_clear_errors(tmp_path, change, match):
    path = _tamper(tmp_path, change)
    with pytest.raises(ValueError, match=match):
        models.load(path)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    models.save(models.mlp(4, (3,), 2), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a robustopt model file"):
        models.load(path)
    assert zipfile.is_zipfile(tmp_path / "model.pt") is False
