"""utils.bn_experiments: the model builder, the sweep and its plot, activations, BatchNorm folding."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import paddle  # noqa: E402
import pytest  # noqa: E402

from utils.bn_experiments import (  # noqa: E402
    DIVERGED_LOSS,
    activations_per_layer,
    final,
    fold_batch_norms,
    make_mlp,
    plot_activation_histograms,
    plot_sweep,
    sweep,
)
from utils.checks import relative_error  # noqa: E402
from utils.digits import load_digits_split  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


@pytest.mark.parametrize("batch_norm", [False, True])
def test_make_mlp_layers_and_initial_weights(batch_norm):
    model = make_mlp(batch_norm, depth=3, width=256, init_scale=0.5, seed=1)
    kinds = [type(layer).__name__ for layer in model]
    assert kinds.count("Linear") == 4 and kinds.count("ReLU") == 3
    assert kinds.count("BatchNorm1D") == (3 if batch_norm else 0)
    linears = [layer for layer in model if isinstance(layer, paddle.nn.Linear)]
    for layer in linears[1:]:
        fan_in = layer.weight.shape[0]
        expected_std = 0.5 * np.sqrt(2.0 / fan_in)  # He initialization times init_scale
        assert abs(layer.weight.numpy().std() / expected_std - 1) < 0.05
        assert not layer.bias.numpy().any()
    assert model(paddle.rand([5, 64])).shape == [5, 10]
    paddle.seed(123)  # the weights depend on make_mlp's seed only, not on Paddle's global state
    again = make_mlp(batch_norm, depth=3, width=256, init_scale=0.5, seed=1)
    np.testing.assert_array_equal(linears[0].weight.numpy(), again[0].weight.numpy())
    # the first layer's weights are exactly N(0, (0.5 * sqrt(2 / 64))^2) draws of NumPy's generator
    expected = np.random.default_rng(1).normal(0.0, 0.5 * np.sqrt(2 / 64), size=(64, 256))
    np.testing.assert_allclose(linears[0].weight.numpy(), expected.astype("float32"))


def test_make_mlp_builds_float64_models_and_leaves_paddles_seed_alone():
    paddle.seed(7)
    expected = paddle.rand([3]).numpy()
    paddle.seed(7)
    model = make_mlp(True, depth=2, width=8, seed=0, dtype="float64")
    assert {str(p.dtype) for p in model.parameters()} == {"paddle.float64"}
    paddle.seed(7)  # reseed: building the model must not have changed what a reseed gives
    assert np.array_equal(paddle.rand([3]).numpy(), expected)
    assert model(paddle.rand([4, 64], dtype="float64")).dtype == paddle.float64


def test_sweep_trains_every_model_value_and_seed():
    data = load_digits_split(n_train=64, as_images=False)
    results = sweep("init_scale", [1.0, 1e4], data, epochs=2, seeds=(0, 1), lr=0.1, batch_size=32)
    assert sorted(results) == [(False, 1.0), (False, 1e4), (True, 1.0), (True, 1e4)]
    assert all(len(histories) == 2 and len(histories[0]["train_loss"]) == 2 for histories in results.values())
    losses = final(results, "train_loss")
    assert losses[False, 1.0].shape == (2,)
    assert losses[False, 1.0][0] == results[False, 1.0][0]["train_loss"][-1]
    assert np.isfinite(losses[False, 1.0]).all() and np.isfinite(losses[True, 1.0]).all()
    # weights 10^4 times too large: the plain network diverges (nan) or stays at chance (ln 10 = 2.3)
    assert not (losses[False, 1e4] < 2.0).any()


def test_sweep_in_float64_repeats_itself_exactly():
    data = load_digits_split(n_train=64, as_images=False, dtype="float64")
    runs = [sweep("lr", [0.3], data, epochs=2, seeds=(0,), dtype="float64") for _ in range(2)]
    assert runs[0] == runs[1]
    assert all(np.isfinite(h["train_loss"]).all() for h in runs[0][True, 0.3])


def test_sweep_rejects_an_unknown_setting():
    with pytest.raises(ValueError, match="'momentum'"):
        sweep("momentum", [0.9], load_digits_split(n_train=8, as_images=False), epochs=1)


def test_plot_sweep_draws_diverged_runs_on_the_top_line():
    history = {"train_loss": [1.0], "train_acc": [0.5], "val_loss": [1.0], "val_acc": [0.5]}
    diverged = {key: [float("nan")] for key in history}
    results = {
        (False, 0.1): [history],
        (False, 1.0): [diverged],
        (True, 0.1): [history],
        (True, 1.0): [history],
    }
    fig, ax = plt.subplots()
    plot_sweep(ax, results, "train_loss", "learning rate", "final training loss", "title")
    labels = [line.get_label() for line in ax.get_lines()]
    assert "with BatchNorm" in labels and "without BatchNorm" in labels
    assert "diverged (loss overflowed)" in labels
    plain = ax.get_lines()[labels.index("without BatchNorm")]
    assert list(plain.get_ydata()) == [1.0, DIVERGED_LOSS]
    assert ax.get_xlabel() == "learning rate" and ax.get_xscale() == "log"
    plt.close(fig)


def test_last_init_scale_scales_only_the_last_layer():
    base = make_mlp(True, depth=2, width=16, init_scale=1.0, seed=4, dtype="float64")
    mixed = make_mlp(True, depth=2, width=16, init_scale=10.0, last_init_scale=0.5, seed=4, dtype="float64")
    linears = [[layer for layer in model if isinstance(layer, paddle.nn.Linear)] for model in (base, mixed)]
    for plain, scaled in zip(linears[0][:-1], linears[1][:-1], strict=True):
        np.testing.assert_allclose(scaled.weight.numpy(), 10.0 * plain.weight.numpy(), rtol=1e-15)
    np.testing.assert_allclose(linears[1][-1].weight.numpy(), 0.5 * linears[0][-1].weight.numpy(), rtol=1e-15)


def test_activations_per_layer_are_each_relu_output_and_the_logits():
    x = load_digits_split(n_train=20, as_images=False, dtype="float64")[0]
    model = make_mlp(False, depth=3, width=8, seed=0, dtype="float64")
    outputs = activations_per_layer(model, x)
    assert [a.shape for a in outputs] == [(20, 8)] * 3 + [(20, 10)]
    h = x  # the same forward pass in NumPy: Paddle's Linear is x @ W + b with W [in, out]
    linears = [layer for layer in model if isinstance(layer, paddle.nn.Linear)]
    for layer, output in zip(linears, outputs, strict=True):
        h = h @ layer.weight.numpy() + layer.bias.numpy()
        if layer is not linears[-1]:
            h = np.maximum(h, 0.0)
        assert relative_error(output, h) < 1e-12
    # with BatchNorm in training mode each hidden layer is normalized with the batch's statistics
    bn_outputs = activations_per_layer(make_mlp(True, depth=3, width=8, init_scale=100.0, seed=0), x)
    assert all(a.min() >= 0 and a.std() < 2 for a in bn_outputs[:-1])


def test_fold_batch_norms_computes_the_eval_mode_model_without_batchnorm():
    data = load_digits_split(n_train=200, as_images=False, dtype="float64")
    model = make_mlp(True, depth=3, width=16, seed=2, dtype="float64")
    for _ in range(3):  # give the moving statistics and gamma/beta values unlike their defaults
        model(paddle.to_tensor(data[0][:64]))
    for layer in model:
        if isinstance(layer, paddle.nn.BatchNorm1D):
            layer.weight.set_value(np.linspace(0.5, 2.0, 16))
            layer.bias.set_value(np.linspace(-1.0, 1.0, 16))
    model.eval()
    before = [p.numpy().copy() for p in model.parameters()]
    folded = fold_batch_norms(model)
    assert [type(layer).__name__ for layer in folded] == ["Linear", "ReLU"] * 3 + ["Linear"]
    x = paddle.to_tensor(data[2])
    assert relative_error(folded(x).numpy(), model(x).numpy()) < 1e-13
    assert all(np.array_equal(b, p.numpy()) for b, p in zip(before, model.parameters(), strict=True))


def test_fold_batch_norms_rejects_what_it_cannot_fold():
    with pytest.raises(ValueError, match="must follow a Linear"):
        fold_batch_norms(paddle.nn.Sequential(paddle.nn.BatchNorm1D(4), paddle.nn.Linear(4, 2)))
    batch_statistics = paddle.nn.Sequential(
        paddle.nn.Linear(4, 4), paddle.nn.BatchNorm1D(4, use_global_stats=False)
    )
    with pytest.raises(ValueError, match="use_global_stats=False"):
        fold_batch_norms(batch_statistics)
    with pytest.raises(ValueError, match="LayerNorm"):
        fold_batch_norms(paddle.nn.Sequential(paddle.nn.Linear(4, 4), paddle.nn.LayerNorm(4)))


def test_plot_activation_histograms_draws_one_curve_per_scale_and_layer():
    x = load_digits_split(n_train=64, as_images=False, dtype="float64")[0]
    activations = {
        k: activations_per_layer(make_mlp(False, depth=2, init_scale=k, seed=0), x) for k in (0.1, 1.0)
    }
    fig, axes = plt.subplots(1, 3)
    plot_activation_histograms(axes, activations, "without BN")
    assert [ax.get_title() for ax in axes] == [
        "without BN: hidden layer 1",
        "without BN: hidden layer 2",
        "without BN: logits",
    ]
    assert all(len(ax.patches) == 2 for ax in axes)  # one step histogram per scale
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["0.1 x He", "1 x He"]
    plt.close(fig)
