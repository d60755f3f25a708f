"""Members × test-time transforms × MC-dropout samples: the one loop that runs an ensemble.

The worker answers jobs with :func:`answer` and the trainer measures a version with
the same function, so a manifest's metrics are the metrics of what is served.
Neither hands this module an ONNX Runtime import: it gets :class:`MemberRunner`\\ s,
each a session-like object (anything with ``run(output_names, feeds)``) and the
names of its image input and output.

Every member sees every image under every test-time transform of the manifest; the
copies are stacked into one ``(S·N, H, W, C)`` batch and run in chunks of at most
``max_batch_size`` rows. With MC dropout (``manifest.output.mc_dropout``) every
transformed copy runs ``samples`` times, each with its own scaled Bernoulli mask fed
to the member's mask input, so ``S`` = samples × transforms. The masks of an image
come from a generator seeded by that image's bytes, the version and the member
index, so an image gets the same answer alone or in any batch, from the worker or
from the trainer. Raw outputs, ``(S, N, K)`` per member, go to
:func:`shared.ensemble.summarize`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from shared.ensemble import summarize
from shared.errors import ModelIntegrityError
from shared.preprocessing import tta_transform
from shared.registry import Manifest
from shared.schemas import TaskResult
from shared.taskdefs import TaskDefinition

__all__ = ["MemberRunner", "Session", "answer", "dropout_masks", "run_members", "stacked_copies"]


class Session(Protocol):
    """What a member runs on: ONNX Runtime's ``InferenceSession`` has this method."""

    def run(self, output_names: list[str] | None,
            input_feed: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        """Outputs named by ``output_names`` (all when None) for the given inputs."""
        ...


@dataclass(frozen=True)
class MemberRunner:
    """One ensemble member ready to run: its session and the names of its input and output.

    ``name`` is the manifest's member name; ``output_name`` None takes the first output.
    """

    name: str
    session: Session
    input_name: str = "image"
    output_name: str | None = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """The member's output for one chunk of rows."""
        names = None if self.output_name is None else [self.output_name]
        return np.asarray(self.session.run(names, dict(feeds))[0])


def stacked_copies(manifest: Manifest, images: np.ndarray) -> np.ndarray:
    """Every image under every transform (× every MC sample) as one contiguous batch.

    Rows are ordered sample, transform, image (image fastest): ``S·N`` rows.
    """
    transforms = manifest.tta or ["identity"]
    # rot180 and the flips are negative-stride views: one contiguous copy for the session.
    stacked = np.ascontiguousarray(np.concatenate([tta_transform(images, t) for t in transforms]))
    mc = manifest.output.mc_dropout
    if mc:
        stacked = np.ascontiguousarray(np.tile(stacked, (mc.samples, 1, 1, 1)))
    return stacked


def dropout_masks(images: np.ndarray, manifest: Manifest, member: int, rows: int) -> np.ndarray:
    """Scaled Bernoulli keep-masks ``(rows, units)`` for :func:`stacked_copies`' rows.

    Each image's masks come from its own generator, seeded by its pixels, the version
    and the member index; row ``c·N + i`` is copy ``c`` of image ``i``.
    """
    mc = manifest.output.mc_dropout
    if mc is None:
        raise ValueError(f"{manifest.task} v{manifest.version} has no MC dropout.")
    n_images = images.shape[0]
    copies = rows // n_images
    keep = 1.0 - mc.rate
    masks = np.empty((copies, n_images, mc.units), dtype=np.float32)
    for i in range(n_images):
        digest = hashlib.blake2b(np.ascontiguousarray(images[i]).tobytes(), digest_size=8).digest()
        rng = np.random.default_rng([int.from_bytes(digest, "little"), manifest.version, member])
        masks[:, i] = rng.random((copies, mc.units), dtype=np.float32) < keep
    return masks.reshape(rows, mc.units) / keep


def run_members(
    manifest: Manifest,
    runners: Sequence[MemberRunner],
    images: np.ndarray,
    *,
    max_batch_size: int,
) -> dict[str, np.ndarray]:
    """Raw outputs of every member under every transform and MC sample.

    Parameters
    ----------
    manifest
        The version: its transforms, MC dropout and version number (which seeds masks).
    runners
        One per member, in the manifest's member order (the index seeds the masks).
    images
        ``(N, H, W, C)`` float32, as :func:`shared.preprocessing.preprocess` makes them.
    max_batch_size
        Most rows given to one session run.

    Returns
    -------
    dict
        Member name → ``(S, N, K)`` float32, ``S`` = MC samples × transforms.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
    images = np.asarray(images, dtype=np.float32)
    n_images = images.shape[0]
    stacked = stacked_copies(manifest, images)
    samples = stacked.shape[0] // n_images
    mc = manifest.output.mc_dropout
    raw: dict[str, np.ndarray] = {}
    for index, runner in enumerate(runners):
        feeds = {runner.input_name: stacked}
        if mc:
            feeds[mc.mask_input] = dropout_masks(images, manifest, index, stacked.shape[0])
        chunks = [
            runner.run({name: value[start : start + max_batch_size]
                        for name, value in feeds.items()})
            for start in range(0, stacked.shape[0], max_batch_size)
        ]
        out = np.concatenate(chunks).astype(np.float32, copy=False)
        raw[runner.name] = out.reshape(samples, n_images, -1)
    return raw


def answer(
    task: TaskDefinition,
    manifest: Manifest,
    runners: Sequence[MemberRunner],
    images: np.ndarray,
    *,
    max_batch_size: int,
) -> tuple[list[TaskResult], dict[str, np.ndarray]]:
    """Answer ``task`` for each image, and the raw outputs the answers came from.

    Returns
    -------
    results
        One :class:`TaskResult` per image, in order (each member's answer and the
        ensemble's summary).
    raw
        Member name → ``(S, N, K)`` raw outputs (what a metric such as a mixture
        likelihood needs beyond the summary).

    Raises
    ------
    ModelIntegrityError
        If a member's outputs do not have one column per task output.
    """
    if images.shape[0] == 0:
        return [], {}
    raw = run_members(manifest, runners, images, max_batch_size=max_batch_size)
    columns = len(task.output_names)
    for name, out in raw.items():
        if out.shape[-1] != columns:
            raise ModelIntegrityError(
                f"{manifest.task} v{manifest.version} member {name} gives {out.shape[-1]} "
                f"outputs per image; task {task.name!r} needs {columns}."
            )
    return summarize(task, manifest, raw), raw
