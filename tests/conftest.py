"""pytest settings shared by the unit tests and nbval's run of the notebooks.

Loaded for every run through ``-p tests.conftest`` in pyproject.toml, so it also applies when a
single notebook is tested (``pytest notebooks/01_batchnorm_vs_numpy.ipynb``).
"""

from nbval.plugin import IPyNbCell

from utils.course import configure_environment

# Unit tests import paddle: give them the same environment as the notebooks (quiet logs, all cores).
configure_environment()


def _without_stderr(outputs):
    return [o for o in outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]


_compare_outputs = IPyNbCell.compare_outputs


def _compare_outputs_without_stderr(self, test, ref, skip_compare=None):
    """nbval compares stdout and results; stderr (Paddle's C++ logs, tqdm bars) is machine noise."""
    return _compare_outputs(self, _without_stderr(test), _without_stderr(ref), skip_compare)


if IPyNbCell.compare_outputs is not _compare_outputs_without_stderr:
    IPyNbCell.compare_outputs = _compare_outputs_without_stderr
