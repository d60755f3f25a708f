"""A run's recipe: data source and sizes, body, fit, test-time transforms, MC dropout — as data.

Every default model is built from a file in ``recipes/`` (``<task>.toml``): the data
source and its parameters, the split sizes, the input size, the fit
(:class:`~services.trainer.fit.FitConfig`: architecture, members, epochs, batch
size, learning rate, patience, MC dropout, fine-tuning), the test-time transforms,
the seed and the export/evaluation checks. ``skyserve-train <task>`` with no options
runs that file as it is; its ``[tiny]`` table holds the seconds-long variant tests
run (``--tiny``). A new default task needs a recipe file, not code. The resolved
recipe is recorded in every manifest (``training.recipe``).
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.trainer.fit import FitConfig
from shared.preprocessing import TTA_TRANSFORMS

__all__ = ["RECIPES_DIR", "DataSpec", "Checks", "Recipe", "recipe_names", "load_recipe",
           "merged", "override"]

RECIPES_DIR = Path(__file__).with_name("recipes")
#: Sources whose examples the caller builds (``skyserve-train catalog``), not a recipe.
EXTERNAL_SOURCES = ("catalog",)


class DataSpec(BaseModel):
    """Where the examples come from (see :mod:`services.trainer.data`) and how many."""

    model_config = ConfigDict(extra="forbid")

    source: str
    n_train: int | None = Field(default=None, ge=1)
    n_val: int | None = Field(default=None, ge=1)
    n_test: int | None = Field(default=None, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_source(self) -> DataSpec:
        from services.trainer.data import SOURCES, source_params

        if self.source in SOURCES:
            self.params = source_params(self.source, self.params)
        elif self.source not in EXTERNAL_SOURCES:
            raise ValueError(f"Unknown data source {self.source!r}; sources: "
                             f"{', '.join(SOURCES)}.")
        return self

    @property
    def sizes(self) -> dict[str, int | None]:
        """``train``, ``val``, ``test`` example counts."""
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}


class Checks(BaseModel):
    """What a version must pass, and what its evaluation fits and shows."""

    model_config = ConfigDict(extra="forbid")

    parity_images: int = Field(default=64, ge=1)  # held-out images Keras and ONNX must agree on
    parity_tolerance: float = Field(default=1e-4, ge=0)  # per element: tol + tol·|Keras|
    bias_correction: bool = True  # regression: try IncliNET's bias correction (kept if it helps)
    failures: int = Field(default=12, ge=0)  # worst examples in failures.png


class Recipe(BaseModel):
    """Everything that decides a model version besides the code and the machine."""

    model_config = ConfigDict(extra="forbid")

    task: str
    description: str = ""
    variant: str = "default"  # "tiny" for the --tiny variant
    seed: int = 0
    input_size: int = Field(ge=8)
    scaling: Literal["unit", "symmetric"] = "unit"
    data: DataSpec
    fit: FitConfig
    tta: list[str] = Field(default_factory=lambda: ["identity"], min_length=1)
    backbone: str | None = None  # fine-tune from this task's saved body, or "imagenet-mobilenet"
    backbone_file: Path | None = None  # imagenet-mobilenet: a LOCAL weights file
    save_backbone: bool = False  # save member 0's body for transfer learning
    checks: Checks = Field(default_factory=Checks)
    tiny: dict[str, Any] = Field(default_factory=dict)  # overrides of the --tiny variant

    @field_validator("tta")
    @classmethod
    def _known_transforms(cls, tta: list[str]) -> list[str]:
        unknown = [t for t in tta if t not in TTA_TRANSFORMS]
        if unknown:
            raise ValueError(f"Unknown test-time transform(s) {', '.join(map(repr, unknown))}; "
                             f"use {', '.join(TTA_TRANSFORMS)}.")
        return tta

    def record(self) -> dict[str, Any]:
        """The recipe as the manifest records it (JSON-able, without the tiny table)."""
        return self.model_dump(mode="json", exclude={"tiny"})

    def training_part(self) -> dict[str, Any]:
        """What decides the trained members: a resumed run must match it exactly."""
        return self.model_dump(mode="json", exclude={"tiny", "description", "tta", "checks"})


def recipe_names() -> list[str]:
    """The tasks with a default recipe file."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` merged over ``base``, tables merged key by key (copies)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def override(flat: dict[str, Any]) -> dict[str, Any]:
    """Flat option names (as the CLI spells them) → the nested recipe table they change.

    Recipe fields stay on top, fit fields go under ``fit``, split sizes under ``data``,
    check fields under ``checks``; any other name is a parameter of the data source
    (checked by the source). None values are left out.
    """
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None:
            continue
        if key in Recipe.model_fields and key not in ("data", "fit", "checks", "tiny"):
            path = (key,)
        elif key in FitConfig.model_fields:
            path = ("fit", key)
        elif key in DataSpec.model_fields and key != "params":
            path = ("data", key)
        elif key in Checks.model_fields:
            path = ("checks", key)
        else:
            path = ("data", "params", key)
        target = nested
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return nested


def load_recipe(task: str, *, tiny: bool = False, overrides: dict[str, Any] | None = None,
                folder: Path | None = None) -> Recipe:
    """The default recipe of ``task``, optionally its tiny variant, with ``overrides``.

    ``overrides`` is a nested table merged over the file (see :func:`override` for
    flat option names).

    Raises
    ------
    ValueError
        If ``task`` has no recipe file or the result does not validate (the message
        says which field).
    """
    path = Path(folder or RECIPES_DIR) / f"{task}.toml"
    if not path.is_file():
        raise ValueError(f"No default recipe for {task!r}; recipes exist for "
                         f"{', '.join(recipe_names())}.")
    body = tomllib.loads(path.read_text())
    if body.get("task", task) != task:
        raise ValueError(f"{path.name} is the recipe of {body['task']!r}, not {task!r}.")
    if tiny:
        body = merged(body, {**body.get("tiny", {}), "variant": "tiny"})
    body = merged(body, overrides or {})
    return Recipe.model_validate({"task": task, **body})
