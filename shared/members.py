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
from shared.registry import InputSpec, Manifest
from shared.schemas import TaskResult
from shared.taskdefs import TaskDefinition

__all__ = [
    "Ensemble",
    "FusedMembers",
    "MemberRunner",
    "Session",
    "agreement",
    "answer",
    "dropout_masks",
    "probe_images",
    "run_members",
    "stacked_copies",
    "transformed_copies",
]


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


@dataclass(frozen=True)
class FusedMembers:
    """Every member of a version in one session: a graph made by :func:`shared.fused.fuse`.

    One run takes ``n`` images as they are (the graph makes the copies under the
    manifest's ``T`` test-time transforms itself) and, with MC dropout, one mask
    input per member of ``S·T·n`` rows; it returns ``(members, S·T·n, K)``.
    """

    names: tuple[str, ...]
    session: Session
    input_name: str = "image"
    mask_inputs: tuple[str, ...] = ()
    output_name: str = "members"
    #: The transforms and MC samples the graph was built for (it makes the copies itself).
    transforms: tuple[str, ...] = ("identity",)
    samples: int = 1

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Every member's output for one chunk, stacked."""
        return np.asarray(self.session.run([self.output_name], dict(feeds))[0])


#: What :func:`run_members` runs: one runner per member, or all members fused.
Ensemble = Sequence[MemberRunner] | FusedMembers


def transformed_copies(manifest: Manifest, images: np.ndarray) -> np.ndarray:
    """Every image under every test-time transform, ``T·N`` rows (transform, then image)."""
    transforms = manifest.tta or ["identity"]
    # rot180 and the flips are negative-stride views: one contiguous copy for the session.
    return np.ascontiguousarray(np.concatenate([tta_transform(images, t) for t in transforms]))


def stacked_copies(manifest: Manifest, images: np.ndarray) -> np.ndarray:
    """Every image under every transform (× every MC sample) as one contiguous batch.

    Rows are ordered sample, transform, image (image fastest): ``S·N`` rows.
    """
    stacked = transformed_copies(manifest, images)
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
    runners: Ensemble,
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
        One per member, in the manifest's member order (the index seeds the masks),
        or the members fused into one session (:class:`FusedMembers`): the same
        answers from one session run per chunk of images.
    images
        ``(N, H, W, C)`` float32, as :func:`shared.preprocessing.preprocess` makes them.
    max_batch_size
        Most rows (images × transforms) given to one session run.

    Returns
    -------
    dict
        Member name → ``(S, N, K)`` float32, ``S`` = MC samples × transforms.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
    images = np.asarray(images, dtype=np.float32)
    if isinstance(runners, FusedMembers):
        return _run_fused(manifest, runners, images, max_batch_size=max_batch_size)
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


def _run_fused(manifest: Manifest, fused: FusedMembers, images: np.ndarray, *,
               max_batch_size: int) -> dict[str, np.ndarray]:
    """:func:`run_members` through one fused session: chunks of whole images."""
    transforms = len(manifest.tta or ["identity"])
    mc = manifest.output.mc_dropout
    samples = mc.samples if mc else 1
    if (tuple(manifest.tta or ["identity"]), samples) != (fused.transforms, fused.samples):
        raise ValueError(
            f"{manifest.task} v{manifest.version}: the fused graph was built for transforms "
            f"{list(fused.transforms)} x {fused.samples} samples, not {manifest.tta} x {samples}; "
            "run its members one by one for other passes."
        )
    per_run = max(1, max_batch_size // transforms)
    chunks = []
    for start in range(0, images.shape[0], per_run):
        chunk = np.ascontiguousarray(images[start : start + per_run])
        feeds = {fused.input_name: chunk}
        rows = samples * transforms * chunk.shape[0]
        for index, name in enumerate(fused.mask_inputs):
            feeds[name] = dropout_masks(chunk, manifest, index, rows)
        out = fused.run(feeds).astype(np.float32, copy=False)
        # Rows are sample, transform, image: (members, S·T, images, K).
        chunks.append(out.reshape(len(fused.names), samples * transforms, chunk.shape[0], -1))
    out = np.concatenate(chunks, axis=2)
    return {name: out[index] for index, name in enumerate(fused.names)}


def probe_images(spec: InputSpec, count: int = 6) -> np.ndarray:
    """Galaxy-like test inputs: noisy elliptical profiles at several angles and axis ratios.

    What a fused graph is checked on against its members (random noise would give
    moments no galaxy gives).
    """
    rng = np.random.default_rng(0)
    ys, xs = np.meshgrid(np.linspace(-1, 1, spec.size), np.linspace(-1, 1, spec.size),
                         indexing="ij")
    images = []
    for i in range(count):
        angle, ratio = 0.7 * i, 0.2 + 0.8 * i / max(count - 1, 1)
        u = xs * np.cos(angle) + ys * np.sin(angle)
        v = -xs * np.sin(angle) + ys * np.cos(angle)
        profile = np.exp(-np.hypot(u / 0.35, v / (0.35 * ratio)))
        image = 0.05 + 0.85 * profile + rng.normal(0, 0.02, profile.shape)
        if i % 3 == 2:  # black on white, as some surveys' previews come
            image = 1.0 - image
        images.append(np.repeat(np.clip(image, 0, 1)[..., None], spec.channels, axis=-1))
    return np.stack(images).astype(np.float32)


def agreement(manifest: Manifest, one: Ensemble, other: Ensemble,
              images: np.ndarray) -> float:
    """How far two ways of running a version's members disagree on ``images``.

    The largest ``|a - b| / (1 + |b|)`` over every raw output (absolute for outputs
    near zero, relative for large logits); ``one`` runs the images in one batch,
    ``other`` three at a time.
    """
    a = run_members(manifest, one, images, max_batch_size=len(images) * 8)
    b = run_members(manifest, other, images, max_batch_size=3)
    if set(a) != set(b) or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    return max(float(np.max(np.abs(a[k] - b[k]) / (1.0 + np.abs(b[k])))) for k in a)


def answer(
    task: TaskDefinition,
    manifest: Manifest,
    runners: Ensemble,
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
