"""The normalization-axes figure (after Wu and He, Group Normalization, 2018), derived from the code.

Each panel is the (N, C, H*W) cube of a feature map; the shaded entries share one mean and one
variance. Nothing about the axes is typed in by hand: which entries share statistics is *measured*
by perturbing one input entry of the NumPy references in :mod:`utils.reference` and recording which
outputs change. An output changes exactly when its mean or variance involves the perturbed entry,
so the picture cannot disagree with the code.
"""

import numpy as np

from utils.reference import batch_norm, group_norm, instance_norm, layer_norm


def normalizations(num_groups):
    """The four methods as functions of an (N, C, H, W) array, in the figure's order."""
    return {
        "BatchNorm": batch_norm,
        "LayerNorm": lambda x: layer_norm(x, x.shape[1:]),  # over [C, H, W] of each sample
        "InstanceNorm": instance_norm,
        "GroupNorm": lambda x: group_norm(x, num_groups),
    }


def shared_statistics_mask(normalize, shape, entry, seed=0):
    """Boolean array of ``shape``: the outputs that change when input ``entry`` changes.

    normalize: a function of one array of ``shape``; entry: an index tuple into it.
    The input is random (float64) so no two entries coincide; the perturbed copy differs in
    ``entry`` only. Outputs outside the entry's statistics group are computed from identical values
    and come out bit-identical, so exact comparison is the right test.
    """
    x = np.random.default_rng(seed).normal(size=shape)
    moved = x.copy()
    moved[entry] += 1.0
    return normalize(moved) != normalize(x)


def statistic_groups(normalize, shape, seed=0):
    """Label every entry of ``shape`` with the group of entries that share its mean and variance.

    Returns an int array of ``shape`` with labels 0, 1, ... in order of first appearance.
    Raises ValueError when ``normalize`` does not split its input into disjoint groups (for
    example a convolution, where each output mixes a neighbourhood of inputs).
    """
    labels = np.full(shape, -1)
    for entry in np.ndindex(*shape):
        if labels[entry] >= 0:
            continue
        mask = shared_statistics_mask(normalize, shape, entry, seed)
        others = [
            shared_statistics_mask(normalize, shape, e, seed) for e in zip(*np.nonzero(mask), strict=True)
        ]
        if not mask[entry] or (labels[mask] >= 0).any() or any((m != mask).any() for m in others):
            raise ValueError(f"the outputs around entry {entry} do not form one disjoint statistics group")
        labels[mask] = labels.max() + 1
    return labels


def draw_normalization_cubes(shape=(4, 6, 2, 3), num_groups=2, entry=(0, 0, 0, 0), axes=None, seed=0):
    """Draw the N / C / H,W cube of each method with the entries sharing ``entry``'s statistics shaded.

    shape: (N, C, H, W) of the feature map; H and W are flattened into one axis, as in Wu and He's
    figure. Returns the matplotlib figure. ``axes``: four 3-D axes to draw into (default: new figure).
    """
    import matplotlib.pyplot as plt

    n, c, h, w = shape
    if axes is None:
        fig = plt.figure(figsize=(13, 3.8))
        axes = [fig.add_subplot(1, 4, i + 1, projection="3d") for i in range(4)]
    fig = axes[0].figure
    for ax, (name, normalize) in zip(axes, normalizations(num_groups).items(), strict=True):
        shared = shared_statistics_mask(normalize, shape, entry, seed).reshape(n, c, h * w)
        colors = np.where(shared[..., None], [0.20, 0.45, 0.85, 0.95], [0.85, 0.85, 0.85, 0.12])
        # voxels are indexed (x, y, z) = (N, C, H*W); in this view N runs to the front left, C to the
        # front right and H*W upwards
        ax.voxels(
            np.ones((n, c, h * w), bool), facecolors=colors, edgecolor=(0.3, 0.3, 0.3, 0.6), linewidth=0.4
        )
        label = f"GroupNorm ({num_groups} groups)" if name == "GroupNorm" else name
        ax.set_title(f"{label}\n{int(shared.sum())} values share one mean/var", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_zticks([])
        ax.set_xlabel("N (sample)", labelpad=-12)
        ax.set_ylabel("C (channel)", labelpad=-12)
        ax.set_zlabel("H, W (position)", labelpad=-12)
        ax.set_box_aspect((n, c, h * w))
        ax.view_init(elev=20, azim=-50)
    return fig
