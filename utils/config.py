"""The settings of a training run: :class:`TrainConfig`, the rule each setting obeys, the recipes,
and the flags of ``python -m utils.train`` generated from its fields.

Every setting is declared once, as a field with its default, its help text and its rule; the
dataclass checks the rules when it is built (``TrainConfig(lr=-1)`` raises ``ValueError``), and
:func:`add_config_flags` / :func:`config_from_args` turn the same fields into command-line flags
and their checks. No Paddle here: the benchmark's parent process and ``--help`` need none.

Two recipes (:data:`RECIPES`, :func:`recipe`): ``"cpu"``, the defaults, chosen for the quality a
laptop CPU reaches in ten minutes, and ``"course"``, the original course's settings, kept for the
comparison.
"""

import argparse
import dataclasses
from collections.abc import Callable

from utils.palm import MIN_IMAGE_SIZE, NORMALIZATIONS


@dataclasses.dataclass(frozen=True)
class Rule:
    """A condition a setting must meet, and how an error message says it (``must be <text>``)."""

    holds: Callable[[object], bool]
    text: str

    def problem(self, value):
        """``"must be <text>, got <value>"`` when ``value`` breaks the rule, else None."""
        return None if self.holds(value) else f"must be {self.text}, got {value!r}"


AT_LEAST_ONE = Rule(lambda value: value >= 1, "at least 1")
POSITIVE = Rule(lambda value: value > 0, "a positive number")
FRACTION = Rule(lambda value: 0 <= value <= 0.5, "between 0 and 0.5")
NOT_NEGATIVE = Rule(lambda value: value >= 0, ">= 0")
IMAGE_SIZE = Rule(lambda value: value >= MIN_IMAGE_SIZE,
                  f"at least {MIN_IMAGE_SIZE} (ResNet downsamples by 32)")
ARCHS = (18, 34, 50, 101, 152)
SCHEDULES = ("constant", "cosine")
DTYPES = ("float32", "float64")


def one_of(choices):
    """The rule "must be one of ...", for a setting with a fixed set of values."""
    return Rule(lambda value: value in choices, "one of " + ", ".join(map(str, choices)))


def _setting(default, help, rule=None, choices=None, type=None, metavar=None):
    """A field of :class:`TrainConfig` with what its flag needs (``type`` where the annotation is not
    a callable one, e.g. ``str | None``)."""
    metadata = {"help": help, "rule": rule, "choices": choices, "type": type, "metavar": metavar}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; saved in every checkpoint and in ``metrics.json``.

    The defaults are the CPU recipe (:data:`RECIPES`); ``recipe("course")`` gives the original
    course's settings. Each field declares its help text and rule once; a value that breaks a rule
    raises ``ValueError`` naming the setting.
    """

    arch: int = _setting(50, "ResNet depth", one_of(ARCHS), choices=ARCHS)
    epochs: int = _setting(15, "epochs in total, counting resumed ones", AT_LEAST_ONE)
    batch_size: int = _setting(10, "images per step and process", AT_LEAST_ONE)
    image_size: int = _setting(112, "side of the square input images, in px", IMAGE_SIZE)
    lr: float = _setting(0.01, "peak Momentum learning rate", POSITIVE)
    momentum: float = _setting(0.9, "Momentum's momentum", Rule(lambda value: 0 <= value < 1, "in [0, 1)"))
    weight_decay: float = _setting(0.001, "L2 decay coefficient, as paddle.regularizer.L2Decay", NOT_NEGATIVE)
    grad_clip: float = _setting(5.0, "clip the gradient's global norm (all weights together, before the "
                                "weight decay is added) at this value, as paddle.nn.ClipGradByGlobalNorm; 0: "
                                "no clipping; the CPU recipe clips (README: the recipe's start)",
                                NOT_NEGATIVE)
    schedule: str = _setting("cosine", "learning rate over the run: constant, or cosine (a linear warmup "
                             "from lr/10, then cosine decay to 0, updated every batch)", one_of(SCHEDULES),
                             choices=SCHEDULES)
    warmup_epochs: float = _setting(1.0, "epochs of linear warmup for the cosine schedule", NOT_NEGATIVE)
    seed: int = _setting(0, "seed of the initial weights, the shuffled order, the augmentation and the "
                         "selection split")
    augment: bool = _setting(True, "random mirror/rotation/zoom/brightness; the course had none")
    zero_init: bool = _setting(False, "start every residual block as the identity: the gamma of the "
                               "BatchNorm that ends its branch set to 0 (random initialisation only: "
                               "ImageNet weights replace it); off in both recipes (README: the recipe study)")
    tta: bool = _setting(True, "flip test-time augmentation: every selection, test and predicted image is "
                         "scored by the mean logit of the image and its mirror image (twice the prediction "
                         "work); on in the CPU recipe (README: the recipe study)")
    selection_fraction: float = _setting(0.0, "share of the training images held out (stratified by H, N, P) "
                                         "to choose the threshold and the calibration; 0: none, the "
                                         "threshold is fixed at 0.5", FRACTION)
    dtype: str = _setting("float32", "float type of the network (float64: rounding differences between "
                          "CPUs start far below float32's; slower; a chaotic run diverges in both)",
                          one_of(DTYPES), choices=DTYPES)
    num_workers: int = _setting(0, "DataLoader worker processes (0: load in the main process)", NOT_NEGATIVE)
    pretrained: str | None = _setting(
        None, "start from these ImageNet weights: the paddle.vision ResNet state dict (.pdparams) that "
        "paddle.vision.models.resnet50(pretrained=True) downloads (see data/README.md); the 1-logit head "
        "is newly initialised", type=str, metavar="FILE")
    normalization: str | None = _setting(
        None, "input normalization: 'course' (x / 127.5 - 1) or 'imagenet' (ImageNet's mean and std per "
        "RGB channel); unset: 'imagenet' with --pretrained, else 'course'",
        Rule(lambda value: value is None or value in NORMALIZATIONS, "'course' or 'imagenet'"),
        choices=tuple(NORMALIZATIONS), type=str)

    def __post_init__(self):
        # Unset: what the weights expect (ImageNet's statistics for ImageNet weights), decided here so that
        # checkpoints record it. (dataclasses.replace copies it: pass normalization=None to decide anew.)
        if self.normalization is None:
            self.normalization = "imagenet" if self.pretrained else "course"
        problems = [f"{name} {problem}" for name, problem in config_problems(vars(self))]
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))


#: Named sets of defaults. "cpu" is :class:`TrainConfig`'s own defaults; "course" is the original
#: course's ResNet-50 section: Momentum 0.001 / 0.9, L2 decay 0.001, batch 10, 224 px, 5 epochs, a
#: constant learning rate, no augmentation (in training or at test time), no gradient clipping.
RECIPES = {
    "cpu": {},
    "course": {"epochs": 5, "image_size": 224, "lr": 0.001, "schedule": "constant", "warmup_epochs": 0.0,
               "augment": False, "tta": False, "grad_clip": 0.0},
}


def recipe(name, **overrides):
    """The :class:`TrainConfig` of recipe ``name`` with ``overrides`` (e.g. ``recipe("course", seed=1)``)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose from {', '.join(RECIPES)}")
    return TrainConfig(**{**RECIPES[name], **overrides})


def config_problems(values):
    """``[(setting, "must be ..., got ...")]`` for every value in ``values`` that breaks its rule."""
    problems = []
    for field in dataclasses.fields(TrainConfig):
        rule = field.metadata["rule"]
        problem = rule.problem(values[field.name]) if rule is not None and field.name in values else None
        if problem is not None:
            problems.append((field.name, problem))
    return problems


def flag_name(setting):
    """The command-line flag of a setting: ``batch_size`` -> ``--batch-size``."""
    return "--" + setting.replace("_", "-")


def add_config_flags(parser, defaults=None):
    """``--recipe`` and one flag per :class:`TrainConfig` field, with its type, default and help text.

    ``defaults``: the recipe whose values the flags default to (default: the CPU recipe). A boolean
    setting gets ``--name`` and ``--no-name``.
    """
    defaults = TrainConfig() if defaults is None else defaults
    parser.add_argument("--recipe", choices=list(RECIPES), default="cpu",
                        help="the defaults of every setting below: cpu (this course's CPU recipe) or course "
                        "(the original course's settings) (default: %(default)s)")
    for field in dataclasses.fields(TrainConfig):
        help_text = field.metadata["help"]
        default = getattr(defaults, field.name)
        if field.type is bool:
            parser.add_argument(flag_name(field.name), action=argparse.BooleanOptionalAction, default=default,
                                help=f"{help_text} (default: %(default)s)")
            continue
        # The recipe's value, except for normalization, whose unset default is resolved per run.
        default = field.default if field.name == "normalization" else default
        parser.add_argument(flag_name(field.name), type=field.metadata["type"] or field.type,
                            default=default, choices=field.metadata["choices"],
                            metavar=field.metadata["metavar"], help=f"{help_text} (default: %(default)s)")


def recipe_defaults(argv):
    """The :class:`TrainConfig` of the ``--recipe`` named in ``argv`` (default "cpu"), read before the
    other flags so that they default to its values."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--recipe", choices=list(RECIPES), default="cpu")
    known, _ = early.parse_known_args(argv)
    return recipe(known.recipe)


def check_flag(parser, flag, value, rule):
    """End the command with ``--flag must be ..., got ...`` (argparse's usage error) if ``value``
    breaks ``rule``; for flags that are not :class:`TrainConfig` fields (the benchmark's)."""
    problem = rule.problem(value)
    if problem is not None:
        parser.error(f"{flag} {problem}")


def config_from_args(parser, args):
    """The :class:`TrainConfig` of parsed flags; a value that breaks its rule ends the command with a
    usage error that names the flag."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    for setting, problem in config_problems(values):
        parser.error(f"{flag_name(setting)} {problem}")
    return TrainConfig(**values)


def setting_rule(setting):
    """The :class:`Rule` of a :class:`TrainConfig` field (None where any value will do)."""
    return next(f.metadata["rule"] for f in dataclasses.fields(TrainConfig) if f.name == setting)

