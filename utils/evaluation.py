"""Evaluating a screening classifier the way a medical-imaging reviewer expects.

A single accuracy on 400 images says little: how sure is it (an interval), at which threshold (chosen
on which data), how do sensitivity and specificity trade off, do the probabilities mean what they say
(calibration), and which images does it get wrong. Everything here is NumPy (and SciPy for one
one-dimensional minimisation), works on arrays of labels (0/1) and scores, and knows nothing about
Paddle, so it serves the notebook, the command line and the tests alike.

The protocol these functions support (:func:`utils.train.train` follows it):

- the official validation set is the **test set**: scored once, after training, and never used to
  choose an epoch, a threshold or a calibration;
- whatever is chosen (a threshold, a temperature) is chosen on a **selection split**, a seeded,
  stratified part of the training images (:func:`stratified_split`), or fixed in advance;
- every test metric comes with a 95% interval: a seeded stratified bootstrap for AUC and accuracy
  (:func:`bootstrap_interval`), Wilson's score interval for sensitivity and specificity
  (:func:`wilson_interval`).
"""

import math

import numpy as np
from scipy import optimize, stats

#: Fewest images of each class a bootstrap interval is computed from: below this the resampled
#: statistics take too few distinct values for their percentiles to mean anything.
MIN_BOOTSTRAP_PER_CLASS = 10


def _binary(labels, scores=None, name="scores"):
    """Labels as an int array of 0/1 (and scores as a float array of the same length)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be a 1-D array of 0 and 1, got {labels[:5]!r}...")
    labels = labels.astype(np.int64)
    if scores is None:
        return labels
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != labels.shape:
        raise ValueError(f"{name} have shape {scores.shape} but labels {labels.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} contain nan or inf")
    return labels, scores


def _open_unit(value, name):
    """``value`` as a float strictly between 0 and 1, or a ValueError naming it."""
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Ranking and the threshold


def roc_auc(labels, scores):
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half (the Mann-Whitney U statistic divided by n_pos * n_neg)."""
    labels, scores = _binary(labels, scores)
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positive and {n_neg} negative labels")
    ranks = stats.rankdata(scores)  # average ranks for ties
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion_at(labels, scores, threshold):
    """``(tn, fp, fn, tp)`` when ``score >= threshold`` means positive."""
    labels, scores = _binary(labels, scores)
    predicted = scores >= threshold
    tp = int((predicted & (labels == 1)).sum())
    fp = int((predicted & (labels == 0)).sum())
    return int((labels == 0).sum()) - fp, fp, int((labels == 1).sum()) - tp, tp


def threshold_for_specificity(labels, scores, specificity):
    """The lowest threshold whose specificity is at least ``specificity``, and the sensitivity there.

    Lower thresholds find more positives, so the lowest admissible one is the most sensitive.
    Returns ``(threshold, sensitivity, achieved specificity)``.
    """
    target = _open_unit(specificity, "the specificity target")
    labels, scores = _binary(labels, scores)
    negatives = np.sort(scores[labels == 0])
    if len(negatives) == 0 or labels.sum() == 0:
        raise ValueError("a specificity target needs both classes")
    # With threshold t, specificity = share of negatives below t. The k-th smallest negative score
    # as a threshold keeps k negatives below it only if it is strictly larger than them.
    candidates = np.unique(np.concatenate([scores, [np.inf]]))
    for threshold in candidates:
        tn, fp, fn, tp = confusion_at(labels, scores, threshold)
        if tn / (tn + fp) >= target:
            return float(threshold), tp / (tp + fn), tn / (tn + fp)
    raise AssertionError("unreachable: an infinite threshold has specificity 1")


def youden_threshold(labels, scores):
    """The threshold that maximises sensitivity + specificity - 1 (Youden's J) on these labels.

    Thresholds are tried halfway between neighbouring scores (so a tiny shift of a score does not
    flip a prediction); of several with the same J the lowest, most sensitive, one is returned.
    Choose it on selection data only.
    """
    labels, scores = _binary(labels, scores)
    values = np.unique(scores)
    cuts = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    best, best_j = None, -np.inf
    for cut in cuts:
        tn, fp, fn, tp = confusion_at(labels, scores, cut)
        j = tp / max(tp + fn, 1) + tn / max(tn + fp, 1) - 1
        if j > best_j + 1e-12:
            best, best_j = cut, j
    return float(best)


def predictive_values(sensitivity, specificity, prevalence):
    """Positive and negative predictive value at a given disease prevalence (Bayes' rule).

    PPV = se p / (se p + (1 - sp)(1 - p)), NPV = sp (1 - p) / (sp (1 - p) + (1 - se) p).
    The test set's own prevalence (53% here) is far above a screening population's, so PPV on
    the test set overstates what a screened patient with a positive result should expect.
    """
    p = _open_unit(prevalence, "the prevalence")
    se, sp = float(sensitivity), float(specificity)
    for name, value in (("sensitivity", se), ("specificity", sp)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    positive, negative = se * p + (1 - sp) * (1 - p), sp * (1 - p) + (1 - se) * p
    ppv = se * p / positive if positive > 0 else float("nan")
    npv = sp * (1 - p) / negative if negative > 0 else float("nan")
    return ppv, npv


# ---------------------------------------------------------------------------------------------
# Intervals


def wilson_interval(successes, total, level=0.95):
    """Wilson's score interval for a proportion: the ``p`` that a score test at ``level`` accepts.

    Unlike the textbook p +- z sqrt(p (1 - p) / n) it stays inside [0, 1] and keeps its coverage
    near 0 and 1, which matters for sensitivities around 0.95 measured on 200 images.
    """
    successes, total = int(successes), int(total)
    if total <= 0 or not 0 <= successes <= total:
        raise ValueError(f"need 0 <= successes <= total and total > 0, got {successes} of {total}")
    z = stats.norm.ppf(0.5 + _open_unit(level, "the level") / 2)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(successes_1, total_1, successes_2, total_2, level=0.95):
    """Newcombe's (1998, method 10) interval for the difference of two independent proportions
    ``p1 - p2``, built from their Wilson intervals. Returns ``(low, high)``.

    For two classifiers scored on the same images it treats the two as independent samples, which
    usually overstates the uncertainty (their errors are positively correlated).
    """
    (low_1, high_1), (low_2, high_2) = (wilson_interval(successes_1, total_1, level),
                                        wilson_interval(successes_2, total_2, level))
    p_1, p_2 = successes_1 / total_1, successes_2 / total_2
    return (p_1 - p_2 - math.hypot(p_1 - low_1, high_2 - p_2),
            p_1 - p_2 + math.hypot(high_1 - p_1, p_2 - low_2))


def two_proportion_p(successes_1, total_1, successes_2, total_2):
    """Two-sided p-value of the z-test that two independent proportions are equal (pooled variance)."""
    for successes, total in ((successes_1, total_1), (successes_2, total_2)):
        if total <= 0 or not 0 <= successes <= total:
            raise ValueError(f"need 0 <= successes <= total and total > 0, got {successes} of {total}")
    pooled = (successes_1 + successes_2) / (total_1 + total_2)
    if pooled in (0.0, 1.0):
        return 1.0  # no variance: both proportions are 0, or both 1
    z = (successes_1 / total_1 - successes_2 / total_2) / math.sqrt(
        pooled * (1 - pooled) * (1 / total_1 + 1 / total_2))
    return math.erfc(abs(z) / math.sqrt(2))


def bootstrap_interval(labels, scores, statistic, n_resamples=2000, level=0.95, seed=0):
    """Percentile interval of ``statistic(labels, scores)`` over a seeded stratified bootstrap.

    Each resample draws, with replacement, as many positives from the positives and as many
    negatives from the negatives as the data has, so every resample has both classes (AUC stays
    defined) and the class balance is the test set's. Returns ``(low, high)``.
    """
    labels, scores = _binary(labels, scores)
    level = _open_unit(level, "the level")
    groups = [np.flatnonzero(labels == value) for value in (0, 1)]
    smallest = min(len(group) for group in groups)
    if smallest < MIN_BOOTSTRAP_PER_CLASS:
        raise ValueError(
            f"a bootstrap interval needs at least {MIN_BOOTSTRAP_PER_CLASS} images of each class; "
            f"got {len(groups[0])} negative and {len(groups[1])} positive"
        )
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    for i in range(n_resamples):
        index = np.concatenate([rng.choice(group, size=len(group)) for group in groups])
        values[i] = statistic(labels[index], scores[index])
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def accuracy_at(threshold):
    """The statistic "accuracy at ``threshold``" for :func:`bootstrap_interval`."""

    def accuracy(labels, scores):
        return float(((scores >= threshold) == (labels == 1)).mean())

    return accuracy


# ---------------------------------------------------------------------------------------------
# Calibration


def brier_score(labels, probabilities):
    """Mean squared difference between the predicted probability and the 0/1 outcome."""
    labels, probabilities = _binary(labels, probabilities, "probabilities")
    return float(np.mean((probabilities - labels) ** 2))


def reliability_table(labels, probabilities, bins=10):
    """Per probability bin ``[lo, hi)``: ``(lo, hi, count, mean predicted, observed frequency)``.

    Empty bins are left out. A calibrated model has observed frequency = mean predicted in each bin.
    """
    labels, probabilities = _binary(labels, probabilities, "probabilities")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, probabilities, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            rows.append(
                (
                    float(edges[b]),
                    float(edges[b + 1]),
                    int(inside.sum()),
                    float(probabilities[inside].mean()),
                    float(labels[inside].mean()),
                )
            )
    return rows


def expected_calibration_error(labels, probabilities, bins=10):
    """Count-weighted mean of |observed frequency - mean predicted| over the reliability bins."""
    rows = reliability_table(labels, probabilities, bins)
    total = sum(row[2] for row in rows)
    return float(sum(count * abs(observed - predicted) for _, _, count, predicted, observed in rows) / total)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))  # no overflow for large |x|


def fit_temperature(labels, logits, bounds=(0.05, 20.0)):
    """The temperature T that minimises the mean log-loss of ``sigmoid(logit / T)`` (Guo et al. 2017).

    T > 1 softens over-confident probabilities, T < 1 sharpens timid ones; the ranking, and so the
    AUC, does not change. Fit it on selection data, never on the test set.
    """
    labels, logits = _binary(labels, logits, "logits")
    signs = 2.0 * labels - 1.0

    def log_loss(log_t):
        # -log sigmoid(s z / T) = log(1 + exp(-s z / T)), computed without overflow
        return float(np.mean(np.logaddexp(0.0, -signs * logits / math.exp(log_t))))

    found = optimize.minimize_scalar(
        log_loss, bounds=tuple(math.log(b) for b in bounds), method="bounded", options={"xatol": 1e-8}
    )
    return float(math.exp(found.x))


def calibrated(logits, temperature):
    """Probabilities ``sigmoid(logit / temperature)``."""
    return _sigmoid(np.asarray(logits, dtype=np.float64) / float(temperature))


def logit(probabilities, clip=1e-12):
    """The inverse of the sigmoid, with probabilities clipped away from 0 and 1."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), clip, 1 - clip)
    return np.log(p) - np.log1p(-p)


# ---------------------------------------------------------------------------------------------
# Splits, errors, explanations, seeds


def stratified_split(groups, fraction, seed=0, labels=None):
    """Split indices so that every group (e.g. the H, N, P kinds) keeps its share in both parts.

    ``groups``: one group name per image. ``fraction``: the share of each group that goes to the
    second part (the selection split), rounded per group; a group always keeps at least one image
    in the first part. Returns ``(first indices, second indices)``, each sorted. With ``labels``
    (0/1 per image), a split that leaves a class out of either part raises ValueError naming it.
    """
    groups = np.asarray(groups)
    fraction = _open_unit(fraction, "the selection fraction")
    rng = np.random.default_rng(seed)
    first, second = [], []
    for name in sorted(set(groups.tolist())):
        members = rng.permutation(np.flatnonzero(groups == name))
        take = min(int(round(len(members) * fraction)), len(members) - 1)
        second.extend(members[:take].tolist())
        first.extend(members[take:].tolist())
    first, second = np.sort(first), np.sort(second)
    if labels is not None:
        labels = _binary(labels)
        for part, indices in (("training", first), ("selection", second)):
            counts = np.bincount(labels[indices], minlength=2)
            if counts.min() == 0:
                raise ValueError(
                    f"a selection fraction of {fraction} leaves the {part} part without any image of class "
                    f"{int(counts.argmin())} ({len(labels)} images, {int(labels.sum())} of class 1): "
                    "use more images or another fraction"
                )
    return first, second


def worst_errors(labels, probabilities, threshold, count=4):
    """Indices of the most confident mistakes: ``(false negatives, false positives)``.

    False negatives are positives with the lowest probabilities below the threshold; false
    positives negatives with the highest above it. Ties keep the original order.
    """
    labels, probabilities = _binary(labels, probabilities, "probabilities")
    misses = np.flatnonzero((labels == 1) & (probabilities < threshold))
    alarms = np.flatnonzero((labels == 0) & (probabilities >= threshold))
    misses = misses[np.argsort(probabilities[misses], kind="stable")][:count]
    alarms = alarms[np.argsort(-probabilities[alarms], kind="stable")][:count]
    return misses, alarms


def pointing_game(heatmaps, masks):
    """Share of maps whose hottest pixel lies inside the object mask (Zhang et al. 2016).

    ``heatmaps`` and ``masks``: sequences of equally shaped 2-D arrays (a mask is boolean). A map
    whose maximum is shared by several pixels scores the fraction of those pixels that lie inside
    (the chance that one of them, picked at random, is): a single maximum scores 0 or 1, and a flat
    map (all zeros, say) scores the mask's share of the image, what a random pixel scores.
    """
    hits = []
    for heat, mask in zip(heatmaps, masks, strict=True):
        heat, mask = np.asarray(heat, dtype=np.float64), np.asarray(mask, dtype=bool)
        if heat.shape != mask.shape:
            raise ValueError(f"a heat map of shape {heat.shape} and a mask of shape {mask.shape}")
        if not mask.any():
            raise ValueError("a mask without any pixel: the pointing game needs an object in every image")
        hits.append(float(mask[heat == heat.max()].mean()))
    if not hits:
        raise ValueError("no heat maps given")
    return float(np.mean(hits))


def dilate(mask, pixels):
    """``mask`` grown by ``pixels`` in every direction: the pixels within that Euclidean distance of a
    marked pixel (a tolerance for the pointing game)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if pixels <= 0:
        return mask.copy()
    offsets = np.arange(-pixels, pixels + 1)
    disc = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= pixels**2
    return ndimage.binary_dilation(mask, structure=disc)


def rank_correlation(a, b):
    """Spearman's rank correlation of two equally long sets of values (ties get average ranks).

    ``nan`` when either set is constant: a constant map has no order to agree or disagree with, and
    no number stands for that (0 would pull a mean towards "unrelated"); skip it, e.g. ``np.nanmean``.
    """
    a, b = np.ravel(a), np.ravel(b)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two sets of at least 2 values of the same size, got {a.size} and {b.size}")
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def seed_summary(values):
    """Mean, sample standard deviation, minimum and maximum of one metric over several seeds."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values to summarise")
    spread = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    return {
        "mean": float(values.mean()),
        "std": spread,
        "min": float(values.min()),
        "max": float(values.max()),
        "n": int(values.size),
    }


# ---------------------------------------------------------------------------------------------
# The report


def test_report(labels, probabilities, threshold, prevalence=None, n_resamples=2000, seed=0, scores=None):
    """Every test metric with its 95% interval, at a threshold chosen beforehand.

    ``scores`` (default: the probabilities) rank the images for the AUC and the sensitivity at a
    specificity; pass the logits. In float64 the sigmoid of a logit above about 37 rounds to exactly
    1.0, so confident images that their logits still order would tie as probabilities.

    Returns a dict: ``n``, ``positives``, ``threshold``; ``auc``, ``accuracy`` with
    ``auc_interval``, ``accuracy_interval`` (stratified bootstrap, seeded); ``sensitivity``,
    ``specificity`` with Wilson intervals; ``sensitivity_at_specificity`` {0.9, 0.95}: the best
    sensitivity on these images at that specificity (an optimistic, descriptive figure: its
    threshold is read off the test set itself); ``brier``, ``ece``; ``ppv``, ``npv`` at
    ``prevalence`` (default: the test set's own) and ``confusion_matrix`` [[TN, FP], [FN, TP]].
    """
    labels, probabilities = _binary(labels, probabilities, "probabilities")
    scores = probabilities if scores is None else _binary(labels, scores)[1]
    tn, fp, fn, tp = confusion_at(labels, probabilities, threshold)
    prevalence = float(labels.mean()) if prevalence is None else _open_unit(prevalence, "the prevalence")
    sensitivity, specificity = tp / (tp + fn), tn / (tn + fp)
    ppv, npv = predictive_values(sensitivity, specificity, prevalence)
    report = {
        "n": int(labels.size),
        "positives": int(labels.sum()),
        "threshold": float(threshold),
        "auc": roc_auc(labels, scores),
        "auc_interval": bootstrap_interval(labels, scores, roc_auc, n_resamples, seed=seed),
        "accuracy": (tp + tn) / labels.size,
        "accuracy_interval": bootstrap_interval(
            labels, probabilities, accuracy_at(threshold), n_resamples, seed=seed
        ),
        "sensitivity": sensitivity,
        "sensitivity_interval": wilson_interval(tp, tp + fn),
        "specificity": specificity,
        "specificity_interval": wilson_interval(tn, tn + fp),
        "sensitivity_at_specificity": {
            str(target): threshold_for_specificity(labels, scores, target)[1] for target in (0.9, 0.95)
        },
        "brier": brier_score(labels, probabilities),
        "ece": expected_calibration_error(labels, probabilities),
        "prevalence": prevalence,
        "ppv": ppv,
        "npv": npv,
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }
    return report


def format_report(report, digits=3):
    """The report as aligned lines of text, each metric with its interval."""

    def number(value):
        return f"{value:.{digits}f}"

    def with_interval(name, interval):
        low, high = interval
        return f"{number(report[name])}  [{number(low)}, {number(high)}]"

    (tn, fp), (fn, tp) = report["confusion_matrix"]
    at = report["sensitivity_at_specificity"]
    lines = [
        f"{report['n']} images, {report['positives']} positive; threshold {report['threshold']:.3f}",
        f"AUC          {with_interval('auc', report['auc_interval'])}  (95% bootstrap interval)",
        f"accuracy     {with_interval('accuracy', report['accuracy_interval'])}",
        f"sensitivity  {with_interval('sensitivity', report['sensitivity_interval'])}  (Wilson; {tp} of "
        f"{tp + fn})",
        f"specificity  {with_interval('specificity', report['specificity_interval'])}  (Wilson; {tn} of "
        f"{tn + fp})",
        f"sensitivity at 90% / 95% specificity: {number(at['0.9'])} / {number(at['0.95'])}",
        f"at prevalence {report['prevalence']:.3f}: PPV {number(report['ppv'])}, NPV {number(report['npv'])}",
        f"Brier score {number(report['brier'])}, expected calibration error {number(report['ece'])}",
    ]
    return "\n".join(lines)
