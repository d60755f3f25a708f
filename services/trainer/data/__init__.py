"""Where a run's examples come from: every source returns the same :class:`LabelledSet` splits.

A recipe names its source and that source's parameters (``[data]`` in
``recipes/<task>.toml``); :func:`build_splits` looks the source up here, so a new
data source is a module with a ``splits`` function and one line in :data:`SOURCES`.

=========== ================================================== =====================
source      what                                                module
=========== ================================================== =====================
galaxies    synthetic disk galaxies, exact inclination          :mod:`.galaxies`
rejection   synthetic scenes with every rejection reason        :mod:`.rejection`
morphology  synthetic scenes with simulated volunteer votes     :mod:`.morphology`
photos      the Stellarium photos the labelled CSV lists        :mod:`.photos`
=========== ================================================== =====================

A user's catalog (:mod:`.catalog`) is read by ``skyserve-train catalog`` into the
same type. Source modules load on demand: GalSim is imported only by the synthetic ones.
"""

from __future__ import annotations

import importlib
from typing import Any

from services.trainer.data.labelled import LabelledSet, Splits, example_seed, split_seeds
from shared.registry import InputSpec
from shared.taskdefs import TaskDefinition

__all__ = ["SOURCES", "LabelledSet", "Splits", "build_splits", "example_seed", "split_seeds",
           "source_params"]

#: Source name → the module holding its ``splits`` function and ``SourceParams`` model.
SOURCES: dict[str, str] = {
    "galaxies": "services.trainer.data.galaxies",
    "rejection": "services.trainer.data.rejection",
    "morphology": "services.trainer.data.morphology",
    "photos": "services.trainer.data.photos",
}


def _module(source: str) -> Any:
    if source not in SOURCES:
        raise ValueError(f"Unknown data source {source!r}; sources: {', '.join(SOURCES)}.")
    return importlib.import_module(SOURCES[source])


def source_params(source: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` validated by the source (defaults filled in, unknown keys refused).

    Raises
    ------
    ValueError
        An unknown source, or parameters the source does not take.
    """
    return _module(source).SourceParams.model_validate(params).model_dump(mode="json")


def build_splits(source: str, params: dict[str, Any], *, task: TaskDefinition,
                 sizes: dict[str, int | None], spec: InputSpec, seed: int, workers: int,
                 train: bool = True) -> Splits:
    """Build a run's splits from ``source`` (see :data:`SOURCES`).

    Parameters
    ----------
    sizes
        ``train``, ``val``, ``test`` example counts (sources with fixed splits ignore them).
    seed
        The run's seed; every split derives its own (:func:`split_seeds`).
    train
        False builds only the held-out sets (a resumed run, a re-evaluation).
    """
    return _module(source).splits(params, task=task, sizes=sizes, spec=spec, seed=seed,
                                  workers=workers, train=train)
