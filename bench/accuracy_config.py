"""The settings of `restune bench accuracy`: a light module, because its --help shows them."""
from __future__ import annotations

# train classify runs the benchmark compares: the TrainSettings each changes; everything else is the default.
RECIPES: dict[str, dict] = {
    "default": {},
    "no_augment": {"augment": "off"},  # --no-augment
    "previous": {"augment": "on", "head_init": "random", "lr": 0.01},  # the defaults this recipe replaced
}
METHODS = ("linear", "bypass", "full")
# The sweep's candidates: each method trains under the default recipe at every lr x weight decay.
SWEEP_LRS: dict[str, tuple[float, ...]] = {"linear": (0.05, 0.01, 0.001), "bypass": (0.01, 0.005, 0.001, 0.0003),
                                           "full": (3e-4, 1e-4)}
SWEEP_WDS: dict[str, tuple[float, ...]] = {"linear": (0.05, 0.0), "bypass": (0.1, 0.05, 0.0), "full": (0.05,)}
TARGET_DEFAULT_TEST = 0.80  # the default recipe on the digits' test split
TARGET_TIME_RATIO = 1.5  # the default recipe's seconds over --no-augment's
TARGET_GAP_POINTS = 10.0  # sweep: the bypass over linear probing, each at its own defaults, on the test split


def recipe_flags(recipe: str) -> str:
    """The `train classify` options a recipe stands for."""
    changes = RECIPES[recipe]
    if changes == {"augment": "off"}:
        return "--no-augment"
    return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in changes.items()) or "(no options)"


def candidates_text(values) -> str:
    return ",".join(f"{v:g}" for v in values)
