"""Answer checkers for the lessons' exercises: each says right or wrong and, when wrong, why.

Every checker returns a :class:`utils.checks.CheckResult`: truthy when the answer is right, and
printing it (or leaving it as a cell's last value) shows the verdict with a hint that names the
likely mistake. One module per topic; the names are importable from ``utils.exercises``. (The
convolution exercises of lesson 05 live with their counting code in :mod:`utils.counting`.)
"""

from utils.exercises.batchnorm import (
    check_batchnorm_answer,
    check_batchnorm_gradient_answer,
    check_running_stats_answer,
    judge_array,
)
from utils.exercises.data import (
    check_class_weights_answer,
    check_display_colour_answer,
    check_pair_auc_answer,
    check_zip_slip_answer,
)
from utils.exercises.dropout import (
    check_dropblock_gamma_answer,
    check_dropconnect_answer,
    check_passes_answer,
    check_variance_shift_answer,
    check_zero_count_answer,
    judge_number,
)
from utils.exercises.folding import check_folded_conv_answer
from utils.exercises.normalization import (
    batch_mean_spread,
    check_single_position_instance_norm,
    check_spread_ratio_answer,
    check_statistics_counts,
)

__all__ = [
    "batch_mean_spread",
    "check_batchnorm_answer",
    "check_batchnorm_gradient_answer",
    "check_class_weights_answer",
    "check_display_colour_answer",
    "check_dropblock_gamma_answer",
    "check_dropconnect_answer",
    "check_folded_conv_answer",
    "check_pair_auc_answer",
    "check_passes_answer",
    "check_running_stats_answer",
    "check_single_position_instance_norm",
    "check_spread_ratio_answer",
    "check_statistics_counts",
    "check_variance_shift_answer",
    "check_zero_count_answer",
    "check_zip_slip_answer",
    "judge_array",
    "judge_number",
]
