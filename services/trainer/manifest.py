"""Writes a version into the registry: ONNX members, metrics, plots, manifest — atomically.

Files are written into a staging folder from ``RegistryWriter.stage``; the manifest
records every member's checksum and provenance, and ``RegistryWriter.publish``
verifies them and renames the folder into place as the next version.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from services.trainer.train import TrainedMember
from shared.registry import (
    Calibration,
    InputSpec,
    Manifest,
    Member,
    OutputSpec,
    RegistryWriter,
    sha256_file,
)

__all__ = ["LIBRARIES", "library_versions", "member_entry", "build_manifest", "write_json",
           "publish"]

LIBRARIES = ("tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "galsim",
             "numpy", "pillow")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped the model (those installed)."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def member_entry(
    member: TrainedMember, path: Path, metrics: dict[str, Any] | None = None
) -> Member:
    """The manifest entry of a staged member file."""
    return Member(
        name=member.name,
        file=path.name,
        architecture=member.architecture,
        sha256=sha256_file(path),
        params=member.params,
        subset_fraction=round(member.subset_fraction, 4),
        subset_seed=member.subset_seed,
        metrics={
            "val_rms_deg": round(member.val_rms_deg, 4),
            "epochs_run": member.epochs_run,
            "best_epoch": member.best_epoch,
            "train_seconds": round(member.train_seconds, 1),
            **(metrics or {}),
        },
    )


def build_manifest(
    *,
    task: str,
    members: list[Member],
    input_spec: InputSpec,
    output: OutputSpec,
    tta: list[str],
    calibration: Calibration | None = None,
    metrics: dict[str, Any] | None = None,
    parity_max_abs_diff: float | None = None,
    training: dict[str, Any] | None = None,
) -> Manifest:
    """A manifest for a staged version (its number is claimed at publish time)."""
    return Manifest(
        task=task,
        version=1,  # placeholder: RegistryWriter.publish claims the real number
        members=members,
        input=input_spec,
        output=output,
        calibration=calibration,
        tta=tta,  # type: ignore[arg-type]  # validated by pydantic
        metrics=metrics or {},
        parity_max_abs_diff=parity_max_abs_diff,
        training=training or {},
    )


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Pretty JSON with a trailing newline (diff-friendly in the repository)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def publish(writer: RegistryWriter, staging: Path, manifest: Manifest) -> Manifest:
    """Verify and publish a staged version; the staging folder is removed on failure."""
    try:
        return writer.publish(staging, manifest)
    except BaseException:
        writer.discard(staging)
        raise
