"""The model registry on a shared volume: ``<root>/<task>/<version>/``.

Each version folder holds ``manifest.json`` and one ``.onnx`` file per ensemble
member (plus optional evaluation files such as ``metrics.json`` and plots). A
version is visible only once complete: writers stage in a hidden folder on the same
volume, claim the next integer by an exclusive ``mkdir`` and ``os.replace`` the
staged folder onto the claim, so readers never see half a version.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.errors import ModelIntegrityError, RegistryUnavailable, UnknownModelVersion, UnknownTask

__all__ = [
    "Calibration",
    "InputSpec",
    "Manifest",
    "McDropout",
    "Member",
    "OutputSpec",
    "RegistryReader",
    "RegistryWriter",
    "sha256_file",
]

_NAME = re.compile(r"^[a-z0-9-]+$")
MANIFEST = "manifest.json"


class InputSpec(BaseModel):
    """What the model's input tensor looks like; drives :func:`shared.preprocessing.preprocess`."""

    size: int = Field(gt=0, description="Square side in pixels.")
    channels: Literal[1, 3] = 3
    scaling: Literal["unit", "symmetric"] = Field(
        default="unit", description="unit: [0, 1]; symmetric: [-1, 1] like (x-128)/128."
    )
    layout: Literal["NHWC"] = "NHWC"
    input_name: str = "image"


class McDropout(BaseModel):
    """MC dropout that survives export: the member takes a dropout mask as a second input.

    A stock ONNX export drops dropout, so members trained with MC dropout are exported
    with an extra input ``mask_input`` of shape ``(N, units)`` multiplied into the
    features before the head. The worker feeds ``samples`` random Bernoulli masks
    (keep probability ``1 - rate``, scaled by ``1 / (1 - rate)``) per image and
    transform, seeded from the image and version so an answer is reproducible.
    """

    samples: int = Field(ge=1, le=256)
    rate: float = Field(gt=0.0, lt=1.0)
    mask_input: str = "mc_mask"
    units: int = Field(gt=0)


class OutputSpec(BaseModel):
    """How a member's raw output becomes the task's answer."""

    output_name: str | None = Field(default=None, description="ONNX output; None = the first.")
    # regression: tanh_range maps (-1, 1) onto the task range as IncliNET's head did.
    activation: Literal["identity", "tanh_range", "softmax", "sigmoid", "dirichlet"] = "identity"
    # vote_tree only: concentrations are 1 + scale * sigmoid(x), Zoobot's head.
    dirichlet_scale: float = 100.0
    mc_dropout: McDropout | None = None


class Calibration(BaseModel):
    """Linear bias correction (IncliNET): ``i_m - i_p = m * i_m + b`` → serve ``(i_p + b)/(1 - m)``,
    and the error model of each answer, both fitted on held-out (validation) data.

    Each answer's 1σ error is ``sqrt(error_floor² + (error_spread_scale · spread)²)``,
    ``spread`` the standard deviation of the bias-corrected values over every member ×
    test-time transform × MC sample of that image (``summary.spread``); absent in
    versions published before the error model existed.
    """

    bias_m: float = 0.0
    bias_b: float = 0.0
    error_floor: float | None = Field(
        default=None, ge=0.0, description="σ's floor, in the task's unit (fitted on validation)."
    )
    error_spread_scale: float | None = Field(
        default=None, ge=0.0, description="σ's factor on the members' spread (fitted on validation)."
    )

    def error(self, spread: float) -> float | None:
        """The calibrated 1σ error of an answer with this spread; None without an error model."""
        if self.error_floor is None or self.error_spread_scale is None:
            return None
        return math.hypot(self.error_floor, self.error_spread_scale * spread)


class Member(BaseModel):
    """One ensemble member's file and provenance."""

    name: str
    file: str
    architecture: str
    sha256: str
    params: int | None = None
    subset_fraction: float | None = Field(
        default=None, description="Fraction of the training set this member saw (bagging)."
    )
    subset_seed: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    """Everything a worker needs to serve a version and a person needs to trust it."""

    task: str
    version: int = Field(ge=1)
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    members: list[Member] = Field(min_length=1)
    input: InputSpec
    output: OutputSpec = Field(default_factory=OutputSpec)
    calibration: Calibration | None = None
    tta: list[Literal["identity", "rot180", "flip_lr", "flip_ud", "rot90", "rot270"]] = Field(
        default_factory=lambda: ["identity"],
        description="Test-time transforms whose member answers are combined by the median.",
    )
    metrics: dict[str, Any] = Field(default_factory=dict)
    parity_max_abs_diff: float | None = None
    training: dict[str, Any] = Field(
        default_factory=dict, description="Data description, hyper-parameters, reproduce command."
    )
    # Model-card text of this version; each falls back to the task definition's when unset.
    intended_use: str | None = None
    limitations: list[str] = Field(default_factory=list)
    license: str | None = None
    citation: str | None = None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UnknownTask(f"{name!r} is not a valid task name (lower-case letters, digits, '-').")
    return name


class RegistryReader:
    """Reads complete versions from a registry root; never writes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def tasks(self) -> list[str]:
        """Tasks that have at least one complete version."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if _NAME.match(p.name) and self.versions(p.name)
        )

    def versions(self, task: str) -> list[int]:
        """Complete versions of ``task``, ascending."""
        folder = self.root / _check_name(task)
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file()
        )

    def latest(self, task: str) -> int:
        """The highest complete version of ``task``.

        Raises
        ------
        UnknownTask
            If the task has no complete version.
        """
        versions = self.versions(task)
        if not versions:
            raise UnknownTask(
                f"No model serves the task {task!r}.", served_tasks=self.tasks()
            )
        return versions[-1]

    def version_dir(self, task: str, version: int) -> Path:
        """Folder of one version (which may not exist)."""
        return self.root / _check_name(task) / str(int(version))

    def manifest(self, task: str, version: int | None = None) -> Manifest:
        """Load a version's manifest; the latest when ``version`` is None.

        Raises
        ------
        UnknownTask, UnknownModelVersion, RegistryUnavailable
        """
        if version is None:
            version = self.latest(task)
        path = self.version_dir(task, version) / MANIFEST
        if not path.is_file():
            raise UnknownModelVersion(
                f"Task {task!r} has no version {version}.", available=self.versions(task)
            )
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise RegistryUnavailable(f"Manifest {path} cannot be read: {exc}") from exc

    def member_path(self, manifest: Manifest, member: Member, *, verify: bool = True) -> Path:
        """Path of a member's ONNX file, its checksum verified first when ``verify``.

        Raises
        ------
        ModelIntegrityError
            If the file is missing or its sha256 differs from the manifest.
        """
        path = self.version_dir(manifest.task, manifest.version) / member.file
        if not path.is_file():
            raise ModelIntegrityError(f"{manifest.task} v{manifest.version}: {member.file} is missing.")
        if verify and sha256_file(path) != member.sha256:
            raise ModelIntegrityError(
                f"{manifest.task} v{manifest.version}: {member.file} does not match its sha256."
            )
        return path

    def read_json(self, task: str, version: int, name: str) -> dict[str, Any] | None:
        """Read an optional JSON file of a version (e.g. ``metrics.json``), None if absent."""
        path = self.version_dir(task, version) / name
        if not path.is_file():
            return None
        return json.loads(path.read_text())


class RegistryWriter:
    """Stages and atomically publishes new versions."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def stage(self, task: str) -> Path:
        """Create an empty hidden staging folder for ``task`` on the registry's volume.

        Staging on the same file system is what makes the final rename atomic.
        """
        folder = self.root / _check_name(task)
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        return staging

    def claim(self, task: str) -> int:
        """Reserve the next version number of ``task`` before its files are ready.

        The claim is an empty numbered folder (readers only see folders holding a
        manifest). A trainer claims first when the number must be known before
        publishing: MC-dropout masks are seeded by the version, so the evaluation
        must use the number that will be served. Publish with ``claimed=`` or
        :meth:`unclaim` it.
        """
        task_dir = self.root / _check_name(task)
        task_dir.mkdir(parents=True, exist_ok=True)
        while True:
            existing = [int(p.name) for p in task_dir.iterdir() if p.name.isdigit()]
            version = max(existing, default=0) + 1
            try:
                (task_dir / str(version)).mkdir()  # exclusive: two publishers never share one
            except FileExistsError:
                continue
            return version

    def unclaim(self, task: str, version: int) -> None:
        """Give back a claimed number that will not be published (its folder must be empty)."""
        claim = self.root / _check_name(task) / str(int(version))
        if claim.is_dir() and not any(claim.iterdir()):
            claim.rmdir()

    def publish(self, staging: Path, manifest: Manifest, *, claimed: int | None = None) -> Manifest:
        """Verify the staged members, claim the next version and move the folder into place.

        The manifest's ``version`` is overwritten with the claimed number (``claimed``
        when the number was reserved with :meth:`claim`), and its members' sha256 are
        checked against the staged files.

        Returns
        -------
        Manifest
            The manifest as published.

        Raises
        ------
        ModelIntegrityError
            If a staged member file is missing or does not match its checksum, or the
            ``claimed`` folder is not an empty claim.
        """
        for member in manifest.members:
            path = staging / member.file
            if not path.is_file() or sha256_file(path) != member.sha256:
                raise ModelIntegrityError(f"Staged member {member.file} is missing or corrupt.")
        task_dir = self.root / _check_name(manifest.task)
        if claimed is not None:
            claim = task_dir / str(int(claimed))
            if not claim.is_dir() or any(claim.iterdir()):
                raise ModelIntegrityError(
                    f"{manifest.task} version {claimed} is not an empty claim; not publishing.")
            version = int(claimed)
        else:
            version = self.claim(manifest.task)
            claim = task_dir / str(version)
        published = manifest.model_copy(update={"version": version})
        (staging / MANIFEST).write_text(published.model_dump_json(indent=2) + "\n")
        # rename(2) replaces an empty directory atomically; readers see all or nothing.
        os.replace(staging, claim)
        return published

    def discard(self, staging: Path) -> None:
        """Remove a staging folder after a failed build."""
        shutil.rmtree(staging, ignore_errors=True)
