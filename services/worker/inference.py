"""Run an ensemble on preprocessed images and summarise it, for any kind of task.

Every member sees every image under every test-time transform of the manifest; the
transformed copies are stacked into one batch and run in chunks of at most
``max_batch_size``. The raw outputs, shaped ``(S, N, K)`` per member, go to
:func:`shared.ensemble.summarize`, the same code the trainer evaluates with.

With MC dropout (``manifest.output.mc_dropout``) every transformed copy is run
``samples`` times, each with its own random dropout mask fed to the member's mask
input, so ``S`` = transforms × samples. The masks are drawn from a generator seeded
by the images' bytes and the model version: the same image gets the same answer.
"""

from __future__ import annotations

import hashlib

import numpy as np

from services.worker.sessions import LoadedModel
from shared.ensemble import summarize
from shared.errors import ModelIntegrityError
from shared.preprocessing import tta_transform
from shared.schemas import TaskResult
from shared.taskdefs import TaskDefinition

__all__ = ["predict", "run_members"]


def run_members(
    model: LoadedModel, images: np.ndarray, *, max_batch_size: int
) -> dict[str, np.ndarray]:
    """Raw outputs of every member under every test-time transform.

    Parameters
    ----------
    model
        The loaded version (its manifest names the transforms).
    images
        ``(N, H, W, C)`` float32, as :func:`shared.preprocessing.preprocess` makes them.
    max_batch_size
        Most rows given to one session run.

    Returns
    -------
    dict
        Member name → ``(S, N, K)`` float32 array, ``S = len(manifest.tta)``.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
    images = np.asarray(images, dtype=np.float32)
    transforms = model.manifest.tta or ["identity"]
    n_images = images.shape[0]
    # One contiguous (S*N, H, W, C) batch: rot180 etc. are negative-stride views.
    stacked = np.ascontiguousarray(np.concatenate([tta_transform(images, t) for t in transforms]))
    mc = model.manifest.output.mc_dropout
    samples = mc.samples if mc else 1
    if mc:
        stacked = np.ascontiguousarray(np.tile(stacked, (samples, 1, 1, 1)))
    raw: dict[str, np.ndarray] = {}
    for m, member in enumerate(model.members):
        feeds = {member.input_name: stacked}
        if mc:
            feeds[mc.mask_input] = _dropout_masks(images, model, m, stacked.shape[0])
        chunks = [
            member.session.run(
                [member.output_name],
                {name: value[start : start + max_batch_size] for name, value in feeds.items()},
            )[0]
            for start in range(0, stacked.shape[0], max_batch_size)
        ]
        out = np.concatenate(chunks).astype(np.float32, copy=False)
        raw[member.member.name] = out.reshape(samples * len(transforms), n_images, -1)
    return raw


def _dropout_masks(images: np.ndarray, model: LoadedModel, member: int, rows: int) -> np.ndarray:
    """Scaled Bernoulli keep-masks, one generator per image.

    Each image's masks are seeded by its own pixels, the version and the member, so an
    image gets the same answer alone or inside any batch.
    """
    mc = model.manifest.output.mc_dropout
    assert mc is not None
    n_images = images.shape[0]
    copies = rows // n_images  # samples x transforms, stacked image-fastest
    keep = 1.0 - mc.rate
    masks = np.empty((copies, n_images, mc.units), dtype=np.float32)
    for i in range(n_images):
        digest = hashlib.blake2b(images[i].tobytes(), digest_size=8).digest()
        rng = np.random.default_rng([int.from_bytes(digest, "little"), model.version, member])
        masks[:, i] = rng.random((copies, mc.units), dtype=np.float32) < keep
    return masks.reshape(rows, mc.units) / keep


def predict(
    task: TaskDefinition, model: LoadedModel, images: np.ndarray, *, max_batch_size: int
) -> list[TaskResult]:
    """Answer ``task`` for each image: every member's answer plus the ensemble summary.

    Parameters
    ----------
    task
        The task definition (kind, range, labels, vote tree).
    model
        A loaded version of that task.
    images
        ``(N, H, W, C)`` float32 preprocessed for ``model.manifest.input``.
    max_batch_size
        Most rows given to one session run.

    Returns
    -------
    list of TaskResult
        One per image, in order.

    Raises
    ------
    ModelIntegrityError
        If a member's outputs do not have one column per task output.
    """
    if images.shape[0] == 0:
        return []
    raw = run_members(model, images, max_batch_size=max_batch_size)
    columns = len(task.output_names)
    for name, out in raw.items():
        if out.shape[-1] != columns:
            raise ModelIntegrityError(
                f"{model.task} v{model.version} member {name} gives {out.shape[-1]} outputs "
                f"per image; task {task.name!r} needs {columns}."
            )
    return summarize(task, model.manifest, raw)
