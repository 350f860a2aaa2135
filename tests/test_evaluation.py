"""utils.evaluation: every statistic against an independent value.

References: brute-force pair counting for the AUC, a published Wilson interval and the score test
that defines it, the large-sample normal interval for a bootstrap, Bayes' rule worked by hand,
temperature recovered from simulated logits, masks drawn here for the pointing game.
"""

import itertools
import math

import numpy as np
import pytest
from scipy import optimize, stats

from utils import evaluation as ev


def brute_force_auc(labels, scores):
    pairs = [(p, n) for p, n in itertools.product(np.flatnonzero(labels == 1), np.flatnonzero(labels == 0))]
    wins = sum(1.0 if scores[p] > scores[n] else 0.5 if scores[p] == scores[n] else 0.0 for p, n in pairs)
    return wins / len(pairs)


def test_auc_equals_the_share_of_correctly_ordered_pairs_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=60)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounding makes ties
    assert ev.roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)
    assert ev.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert ev.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        ev.roc_auc([1, 1], [0.2, 0.3])


def test_wilson_matches_newcombe_1998_and_is_the_score_tests_acceptance_region():
    # Newcombe (1998), Stat. Med. 17:857, Table II, method 3 (score interval without correction)
    published = {
        (81, 263): (0.2553, 0.3662),
        (15, 148): (0.0624, 0.1605),
        (0, 20): (0.0, 0.1611),
        (1, 29): (0.0061, 0.1718),
    }
    for (k, n), (low, high) in published.items():
        got = ev.wilson_interval(k, n)
        assert got == pytest.approx((low, high), abs=1e-4)
    # the endpoints are where the score statistic |p_hat - p| / sqrt(p (1 - p) / n) equals z
    k, n, z = 170, 200, stats.norm.ppf(0.975)
    score = lambda p: abs(k / n - p) / math.sqrt(p * (1 - p) / n) - z  # noqa: E731
    low, high = ev.wilson_interval(k, n)
    assert low == pytest.approx(optimize.brentq(score, 1e-9, k / n), abs=1e-10)
    assert high == pytest.approx(optimize.brentq(score, k / n, 1 - 1e-9), abs=1e-10)


def test_wilson_rejects_impossible_counts():
    for k, n in ((5, 4), (-1, 4), (0, 0)):
        with pytest.raises(ValueError, match="successes"):
            ev.wilson_interval(k, n)


def test_bootstrap_accuracy_interval_agrees_with_the_normal_approximation():
    # 400 images, 90% correct: the large-sample interval is 0.9 +- 1.96 * sqrt(0.9 * 0.1 / 400)
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 200)
    correct = rng.permutation(np.r_[np.ones(360), np.zeros(40)]).astype(bool)
    scores = np.where(correct == (labels == 1), 0.9, 0.1)  # predicted 1 exactly where correct for label 1
    accuracy = ev.accuracy_at(0.5)(labels, scores)
    assert accuracy == 0.9
    low, high = ev.bootstrap_interval(labels, scores, ev.accuracy_at(0.5), n_resamples=4000, seed=0)
    half = 1.96 * math.sqrt(0.9 * 0.1 / 400)
    assert low == pytest.approx(0.9 - half, abs=0.006) and high == pytest.approx(0.9 + half, abs=0.006)


def test_bootstrap_auc_interval_agrees_with_hanley_mcneil():
    # Binormal scores with separation 1.5: the Hanley & McNeil (1982) standard error of the AUC
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 200)
    scores = rng.normal(labels * 1.5, 1.0)
    auc = ev.roc_auc(labels, scores)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    se = math.sqrt((auc * (1 - auc) + 199 * (q1 - auc**2) + 199 * (q2 - auc**2)) / (200 * 200))
    low, high = ev.bootstrap_interval(labels, scores, ev.roc_auc, n_resamples=3000, seed=0)
    assert (high - low) / 2 == pytest.approx(1.96 * se, rel=0.15)
    assert low < auc < high


def test_bootstrap_is_seeded_and_refuses_too_few_images():
    labels, scores = np.repeat([0, 1], 20), np.linspace(0, 1, 40)
    first = ev.bootstrap_interval(labels, scores, ev.roc_auc, n_resamples=200, seed=3)
    assert first == ev.bootstrap_interval(labels, scores, ev.roc_auc, n_resamples=200, seed=3)
    with pytest.raises(ValueError, match="at least 10 images of each class; got 5 negative"):
        ev.bootstrap_interval(np.r_[np.zeros(5), np.ones(30)], np.linspace(0, 1, 35), ev.roc_auc)


def test_threshold_for_specificity_against_a_search_over_every_cut():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, size=200)
    scores = rng.normal(labels, 1.0)
    for target in (0.9, 0.95):
        threshold, sensitivity, specificity = ev.threshold_for_specificity(labels, scores, target)
        best = max(
            (np.mean(scores[labels == 1] >= t), t)
            for t in np.r_[scores, np.inf]
            if np.mean(scores[labels == 0] < t) >= target
        )
        assert sensitivity == pytest.approx(best[0]) and specificity >= target
        assert np.mean(scores[labels == 0] < threshold) == pytest.approx(specificity)
    for bad in (0.0, 1.0, 1.2):
        with pytest.raises(ValueError, match="specificity target must be between 0 and 1"):
            ev.threshold_for_specificity(labels, scores, bad)


def test_youden_threshold_separates_separable_scores_and_maximises_j():
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert ev.youden_threshold(labels, [0.1, 0.2, 0.3, 0.6, 0.7, 0.8]) == pytest.approx(0.45)
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, size=100)
    scores = rng.normal(labels, 1.0)
    cut = ev.youden_threshold(labels, scores)
    j = lambda t: np.mean(scores[labels == 1] >= t) + np.mean(scores[labels == 0] < t) - 1  # noqa: E731
    assert j(cut) == pytest.approx(max(j(t) for t in np.r_[scores, np.inf, -np.inf]))


def test_predictive_values_by_hand():
    # 1,000 people, prevalence 10%: 100 sick, 90 found (se 0.9); 900 healthy, 810 cleared (sp 0.9)
    ppv, npv = ev.predictive_values(0.9, 0.9, 0.1)
    assert ppv == pytest.approx(90 / (90 + 90)) and npv == pytest.approx(810 / (810 + 10))
    for bad in (0.0, 1.0, -0.1, 2.0):
        with pytest.raises(ValueError, match="prevalence must be between 0 and 1"):
            ev.predictive_values(0.9, 0.9, bad)


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(6)
    true_logits = rng.normal(0.0, 2.0, size=20_000)
    labels = (rng.random(20_000) < 1 / (1 + np.exp(-true_logits))).astype(int)
    for temperature in (0.5, 2.5):  # observed logits = true logits x T: the fit must find T
        assert ev.fit_temperature(labels, true_logits * temperature) == pytest.approx(temperature, rel=0.05)
    assert ev.calibrated([0.0, 2.0], 2.0) == pytest.approx([0.5, 1 / (1 + math.exp(-1))])
    assert ev.logit(ev.calibrated([-3.0, 0.5], 1.0)) == pytest.approx([-3.0, 0.5])


def test_brier_reliability_and_ece_by_hand():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([0.1, 0.3, 0.6, 0.9])
    assert ev.brier_score(labels, probabilities) == pytest.approx((0.01 + 0.09 + 0.16 + 0.01) / 4)
    rows = ev.reliability_table(labels, probabilities, bins=2)  # [0, 0.5): 0.1, 0.3; [0.5, 1]: 0.6, 0.9
    assert rows == [(0.0, 0.5, 2, pytest.approx(0.2), 0.0), (0.5, 1.0, 2, pytest.approx(0.75), 1.0)]
    assert ev.expected_calibration_error(labels, probabilities, bins=2) == pytest.approx((0.2 + 0.25) / 2)


def test_stratified_split_keeps_every_groups_share_and_names_a_class_left_out():
    groups = np.array(["H"] * 26 + ["N"] * 161 + ["P"] * 213)
    labels = (groups == "P").astype(int)
    first, second = ev.stratified_split(groups, 0.2, seed=0, labels=labels)
    assert sorted(np.r_[first, second].tolist()) == list(range(400))
    assert [int((groups[second] == g).sum()) for g in "HNP"] == [5, 32, 43]  # round(0.2 * count)
    assert ev.stratified_split(groups, 0.2, seed=0)[1].tolist() == second.tolist()
    assert ev.stratified_split(groups, 0.2, seed=1)[1].tolist() != second.tolist()
    # one H image stays in the first part; with only H as class 0 the selection part lacks class 0
    tiny = np.array(["H"] + ["P"] * 10)
    assert ev.stratified_split(tiny, 0.2)[0].tolist().count(0) == 1
    with pytest.raises(ValueError, match="leaves the selection part without any image of class 0"):
        ev.stratified_split(tiny, 0.2, labels=(tiny == "P").astype(int))
    with pytest.raises(ValueError, match="selection fraction must be between 0 and 1"):
        ev.stratified_split(groups, 0.0)


def test_worst_errors_are_the_most_confident_mistakes():
    labels = np.array([1, 1, 1, 0, 0, 0, 1])
    probabilities = np.array([0.1, 0.4, 0.9, 0.8, 0.95, 0.2, 0.05])
    misses, alarms = ev.worst_errors(labels, probabilities, threshold=0.5, count=2)
    assert misses.tolist() == [6, 0] and alarms.tolist() == [4, 3]


def test_pointing_game_against_masks_drawn_here():
    masks = [np.zeros((8, 8), bool) for _ in range(4)]
    for mask in masks:
        mask[2:4, 5:7] = True  # 4 of the 64 pixels
    heat = [np.zeros((8, 8)) for _ in range(4)]
    heat[0][3, 5] = 1.0  # a single maximum inside: 1
    heat[1][0, 0] = 1.0  # a single maximum outside: 0
    heat[2][2, 6] = heat[2][7, 7] = 1.0  # two tied maxima, one of them inside: 1/2
    heat[3][:, :] = 0.5  # flat: all 64 pixels tie, 4 of them inside: 4/64, a random pixel's chance
    assert [ev.pointing_game([h], [m]) for h, m in zip(heat, masks, strict=True)] == [1.0, 0.0, 0.5, 0.0625]
    assert ev.pointing_game(heat, masks) == pytest.approx((1 + 0 + 0.5 + 4 / 64) / 4)
    assert ev.pointing_game([np.zeros((8, 8))], masks[:1]) == 0.0625  # an all-zero map is not a hit
    with pytest.raises(ValueError, match="without any pixel"):
        ev.pointing_game([np.ones((2, 2))], [np.zeros((2, 2), bool)])


def test_dilate_marks_every_pixel_within_the_distance_by_brute_force():
    mask = np.zeros((9, 11), bool)
    mask[4, 5] = mask[0, 0] = True
    grown = ev.dilate(mask, 2)
    rows, cols = np.mgrid[0:9, 0:11]
    expected = ((rows - 4) ** 2 + (cols - 5) ** 2 <= 4) | (rows**2 + cols**2 <= 4)
    assert np.array_equal(grown, expected)
    assert np.array_equal(ev.dilate(mask, 0), mask)


def test_rank_correlation_by_hand():
    # ranks (1, 2, 3, 4) and (1, 3, 2, 4): Spearman = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert ev.rank_correlation([10, 20, 30, 40], [1.0, 5.0, 2.0, 9.0]) == pytest.approx(0.8)
    assert ev.rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # a constant set has no order: no correlation to report, not a correlation of 0
    assert math.isnan(ev.rank_correlation([1, 2, 3], [5, 5, 5]))
    assert math.isnan(ev.rank_correlation([0.0, 0.0, 0.0], [1, 2, 3]))
    # against NumPy: Pearson's r of the ranks, ranks with ties averaged by hand
    a, b = [3.0, 1.0, 4.0, 1.0, 5.0], [2.0, 7.0, 1.0, 8.0, 2.0]
    ranks_a, ranks_b = [3, 1.5, 4, 1.5, 5], [2.5, 4, 1, 5, 2.5]
    assert ev.rank_correlation(a, b) == pytest.approx(np.corrcoef(ranks_a, ranks_b)[0, 1], abs=1e-12)


def test_seed_summary_by_hand():
    summary = ev.seed_summary([0.96, 0.97, 0.98])
    assert summary["mean"] == pytest.approx(0.97) and summary["std"] == pytest.approx(0.01)
    assert (summary["min"], summary["max"], summary["n"]) == (0.96, 0.98, 3)


def test_report_combines_the_pieces_and_prints_every_interval():
    rng = np.random.default_rng(7)
    labels = np.repeat([0, 1], [189, 211])
    probabilities = 1 / (1 + np.exp(-rng.normal(np.where(labels == 1, 2.0, -2.0), 1.5)))
    report = ev.test_report(labels, probabilities, threshold=0.5, prevalence=0.1, n_resamples=300)
    (tn, fp), (fn, tp) = report["confusion_matrix"]
    assert (tn + fp, fn + tp) == (189, 211)
    assert report["sensitivity"] == tp / 211 and report["specificity"] == tn / 189
    assert report["sensitivity_interval"] == ev.wilson_interval(tp, 211)
    assert report["auc"] == pytest.approx(brute_force_auc(labels, probabilities))
    assert report["auc_interval"][0] < report["auc"] < report["auc_interval"][1]
    assert report["ppv"] == pytest.approx(ev.predictive_values(tp / 211, tn / 189, 0.1)[0])
    text = ev.format_report(report)
    assert text.count("[") == 4 and "PPV" in text and "400 images, 211 positive" in text


def test_report_ranks_by_the_logits_where_probabilities_round_to_one():
    # sigmoid(40) and sigmoid(45) are both exactly 1.0 in float64: only the logits still order them
    labels = np.tile([0, 1, 0, 1], 10)  # ten copies: enough images for the bootstrap
    logits = np.tile([40.0, 45.0, -3.0, 2.0], 10)
    probabilities = ev.calibrated(logits, 1.0)
    assert probabilities[0] == probabilities[1] == 1.0
    tied = ev.test_report(labels, probabilities, threshold=0.5, n_resamples=50)
    ranked = ev.test_report(labels, probabilities, threshold=0.5, n_resamples=50, scores=logits)
    assert tied["auc"] == pytest.approx(brute_force_auc(labels, probabilities)) == 0.625
    assert ranked["auc"] == brute_force_auc(labels, logits) == 0.75
    assert ranked["confusion_matrix"] == tied["confusion_matrix"]


def test_difference_interval_matches_newcombes_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, Table II, example (a): 56/70 - 48/80,
    # method 10 (the score interval): 0.0524 to 0.3339.
    low, high = ev.difference_interval(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    low, high = ev.difference_interval(48, 80, 56, 70)
    assert (round(low, 4), round(high, 4)) == (-0.3339, -0.0524), "swapping the samples mirrors it"


@pytest.mark.parametrize("counts", [(386, 400, 372, 400), (384, 400, 372, 400), (56, 70, 48, 80),
                                    (3, 10, 9, 12)])
def test_two_proportion_p_is_the_uncorrected_chi_square_test(counts):
    # The pooled two-proportion z-test is the 2x2 chi-square test without continuity correction.
    from scipy.stats import chi2_contingency

    a, n, b, m = counts
    table = [[a, n - a], [b, m - b]]
    expected = chi2_contingency(table, correction=False)[1]
    assert abs(ev.two_proportion_p(a, n, b, m) - expected) < 1e-12


def test_two_proportion_p_of_equal_or_degenerate_proportions():
    assert ev.two_proportion_p(20, 40, 10, 20) == 1.0
    assert ev.two_proportion_p(0, 10, 0, 12) == 1.0
    with pytest.raises(ValueError, match="11 of 10"):
        ev.two_proportion_p(11, 10, 1, 10)
