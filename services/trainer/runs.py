"""A run folder: trained Keras members kept until their version is published.

Every member is saved here as soon as it has trained (its export model and its
body as ``.keras`` files, its provenance as JSON), before anything is exported.
When export, the parity check or the evaluation fails, the folder stays, and
``skyserve-train TASK --resume RUN_DIR`` finishes the run from it: saved members are
loaded instead of trained (members that never finished are trained then). A run
is resumed with the recipe it started with; only what does not change the trained
members (test-time transforms, checks) may differ. The folder is removed once
the version is published.

Layout: ``run.json`` (recipe, command, training-set description, imbalance
weights) and ``members/<name>.keras``, ``<name>.body.keras``, ``<name>.json``.
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.trainer.fit import FittedMember
from services.trainer.recipe import Recipe
from shared.registry import McDropout

__all__ = ["RUN_FILE", "RunFolder", "new_run_dir"]

RUN_FILE = "run.json"


def new_run_dir(root: Path, task: str) -> Path:
    """A fresh run folder path under ``root``: ``<task>-<UTC time>-<6 hex>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{task}-{stamp}-{uuid.uuid4().hex[:6]}"


class RunFolder:
    """The saved state of one training run (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def resuming(self) -> bool:
        """Whether the folder already holds a started run."""
        return (self.path / RUN_FILE).is_file()

    def state(self) -> dict[str, Any]:
        """``run.json`` (empty before :meth:`start`)."""
        file = self.path / RUN_FILE
        return json.loads(file.read_text()) if file.is_file() else {}

    def _write(self, state: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{RUN_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.path / RUN_FILE)

    def stored_recipe(self) -> dict[str, Any] | None:
        """The recipe the run started with (as :meth:`Recipe.record` wrote it)."""
        return self.state().get("recipe")

    def start(self, recipe: Recipe, command: str) -> str:
        """Record a new run, or check that ``recipe`` trains what the saved run trained.

        Returns the command that started the run (``command`` for a new one): the
        command that rebuilds its version.

        Raises
        ------
        ValueError
            If the folder holds a run whose training differs (the fields are named).
        """
        state = self.state()
        if state:
            saved = state["training"]
            now = recipe.training_part()
            differ = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
            if differ:
                raise ValueError(f"{self.path} holds a run of another recipe (it differs in "
                                 f"{', '.join(differ)}); resume it with the recipe it started "
                                 "with, or start a new run.")
            state["resumed"] = state.get("resumed", []) + [datetime.now(UTC).isoformat()]
        else:
            state = {"task": recipe.task, "command": command, "recipe": recipe.record(),
                     "training": recipe.training_part(),
                     "created": datetime.now(UTC).isoformat()}
        self._write(state)
        return str(state["command"])

    def save_training_set(self, description: dict[str, Any], counts: dict[str, int],
                          size: int, weighting: dict[str, Any],
                          backbone: dict[str, Any] | None = None) -> None:
        """What the manifest needs of the training set and the pretrained body's card
        (a resumed run rebuilds neither)."""
        state = self.state()
        state["train"] = {"description": description, "label_counts": counts, "n": size,
                          "weighting": weighting, "backbone": backbone}
        self._write(state)

    def _files(self, name: str) -> tuple[Path, Path, Path]:
        folder = self.path / "members"
        return folder / f"{name}.keras", folder / f"{name}.body.keras", folder / f"{name}.json"

    def save_member(self, member: FittedMember) -> None:
        """Save a trained member's export model, body and provenance."""
        export, body, info = self._files(member.name)
        export.parent.mkdir(parents=True, exist_ok=True)
        member.models.export.save(export)
        member.models.body.save(body)
        mc = member.models.mc
        info.write_text(json.dumps({**member.provenance(),
                                    "mc": mc.model_dump() if mc else None}, indent=2) + "\n")

    def missing(self, names: list[str]) -> list[str]:
        """The members among ``names`` that are not saved (yet)."""
        return [name for name in names if not all(f.is_file() for f in self._files(name))]

    def load_member(self, name: str) -> FittedMember | None:
        """A saved member (its export model and body loaded), or None if it never finished."""
        export, body, info = self._files(name)
        if not (export.is_file() and body.is_file() and info.is_file()):
            return None
        import keras

        from services.trainer.model import bodies  # noqa: F401  registers the custom layers
        from services.trainer.model.heads import MemberModels

        saved = json.loads(info.read_text())
        mc_json = saved.pop("mc", None)
        mc = McDropout.model_validate(mc_json) if mc_json else None
        models = MemberModels(train=None, export=keras.models.load_model(export, compile=False),
                              body=keras.models.load_model(body, compile=False), head=None, mc=mc)
        return FittedMember(models=models, **saved)

    def remove(self) -> None:
        """Delete the folder (its version is published)."""
        shutil.rmtree(self.path, ignore_errors=True)
