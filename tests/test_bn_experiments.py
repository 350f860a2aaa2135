"""utils.bn_experiments: the model builder, the sweep and its plot."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import paddle  # noqa: E402
import pytest  # noqa: E402

from utils.bn_experiments import DIVERGED_LOSS, final, make_mlp, plot_sweep, sweep  # noqa: E402
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
