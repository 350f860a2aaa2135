"""utils.normalization_figure: the measured sharing masks against hand-derived ones, and the drawing."""

import matplotlib
import numpy as np
import pytest

from utils.normalization_figure import (
    draw_normalization_cubes,
    normalizations,
    shared_statistics_mask,
    statistic_groups,
)

matplotlib.use("Agg")


def expected_mask(name, shape, entry, num_groups):
    """Which entries share ``entry``'s mean and variance, written out from the definitions."""
    n, c = entry[:2]
    mask = np.zeros(shape, bool)
    if name == "BatchNorm":
        mask[:, c] = True  # one channel, every sample and position
    elif name == "LayerNorm":
        mask[n] = True  # one sample, every channel and position
    elif name == "InstanceNorm":
        mask[n, c] = True  # one sample, one channel, every position
    else:
        size = shape[1] // num_groups
        first = c // size * size
        mask[n, first : first + size] = True  # one sample, the channels of c's group
    return mask


@pytest.mark.parametrize("shape, num_groups", [((4, 6, 2, 3), 2), ((3, 6, 2, 2), 3), ((1, 4, 1, 3), 4)])
@pytest.mark.parametrize("name", ["BatchNorm", "LayerNorm", "InstanceNorm", "GroupNorm"])
def test_masks_match_hand_derived_ones(shape, num_groups, name):
    normalize = normalizations(num_groups)[name]
    entries = [(0, 0, 0, 0), tuple(s - 1 for s in shape), (shape[0] // 2, shape[1] // 2 + 1, 0, shape[3] - 1)]
    for entry in entries:
        mask = shared_statistics_mask(normalize, shape, entry)
        np.testing.assert_array_equal(mask, expected_mask(name, shape, entry, num_groups))


@pytest.mark.parametrize(
    "name, count, size",
    [
        ("BatchNorm", 6, 4 * 2 * 3),
        ("LayerNorm", 4, 6 * 2 * 3),
        ("InstanceNorm", 24, 2 * 3),
        ("GroupNorm", 8, 3 * 6),
    ],
)
def test_groups_partition_the_feature_map(name, count, size):
    shape = (4, 6, 2, 3)
    labels = statistic_groups(normalizations(2)[name], shape)
    assert labels.max() + 1 == count
    assert (np.bincount(labels.ravel()) == size).all()
    # every entry's group is exactly its hand-derived mask
    for entry in [(0, 0, 0, 0), (3, 5, 1, 2), (2, 3, 0, 1)]:
        np.testing.assert_array_equal(labels == labels[entry], expected_mask(name, shape, entry, 2))


def test_a_function_without_disjoint_groups_is_rejected():
    def smooth(x):  # each output mixes its neighbours along W: overlapping, not disjoint, groups
        return x + np.roll(x, 1, axis=3)

    with pytest.raises(ValueError, match=r"entry \(0, 0, 0, 0\)"):
        statistic_groups(smooth, (2, 2, 1, 3))


def test_drawing_has_four_labelled_panels_with_measured_counts():
    fig = draw_normalization_cubes(shape=(4, 6, 2, 3), num_groups=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "BatchNorm\n24 values share one mean/var",
        "LayerNorm\n36 values share one mean/var",
        "InstanceNorm\n6 values share one mean/var",
        "GroupNorm (3 groups)\n12 values share one mean/var",
    ]
    assert all(ax.get_xlabel() == "N (sample)" and ax.get_zlabel() == "H, W (position)" for ax in fig.axes)
    matplotlib.pyplot.close(fig)
