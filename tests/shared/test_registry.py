"""Registry layout, atomic publishing and checksum verification."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from shared.errors import ModelIntegrityError, UnknownModelVersion, UnknownTask
from shared.registry import InputSpec, Manifest, Member, RegistryReader, RegistryWriter, sha256_file
from tests.helpers.tiny_models import publish_tiny_regression


def test_publish_numbers_versions_and_latest_serves(registry_root: Path) -> None:
    first = publish_tiny_regression(registry_root)
    second = publish_tiny_regression(registry_root)
    reader = RegistryReader(registry_root)
    assert (first.version, second.version) == (1, 2)
    assert reader.versions("inclination") == [1, 2] and reader.latest("inclination") == 2
    manifest = reader.manifest("inclination")
    for member in manifest.members:
        assert reader.member_path(manifest, member).is_file()


def test_half_written_and_staging_folders_are_invisible(registry_root: Path) -> None:
    publish_tiny_regression(registry_root)
    (registry_root / "inclination" / "2").mkdir()  # claimed, not yet filled
    RegistryWriter(registry_root).stage("inclination")  # an abandoned staging folder
    reader = RegistryReader(registry_root)
    assert reader.versions("inclination") == [1]
    # The next publisher skips the claimed number rather than racing for it.
    assert publish_tiny_regression(registry_root).version == 3


def test_concurrent_publishers_never_share_a_version(registry_root: Path) -> None:
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(publish_tiny_regression(registry_root).version))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [1, 2, 3, 4, 5, 6]


def test_tampered_member_is_refused(registry_root: Path) -> None:
    manifest = publish_tiny_regression(registry_root)
    reader = RegistryReader(registry_root)
    path = reader.version_dir("inclination", 1) / manifest.members[0].file
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        reader.member_path(manifest, manifest.members[0])


def test_publish_refuses_a_staged_folder_with_a_bad_checksum(registry_root: Path) -> None:
    writer = RegistryWriter(registry_root)
    staging = writer.stage("inclination")
    (staging / "m.onnx").write_bytes(b"not what the manifest says")
    manifest = Manifest(
        task="inclination",
        version=1,
        members=[Member(name="m", file="m.onnx", architecture="x", sha256="0" * 64)],
        input=InputSpec(size=8),
    )
    with pytest.raises(ModelIntegrityError):
        writer.publish(staging, manifest)
    assert RegistryReader(registry_root).versions("inclination") == []
    manifest.members[0].sha256 = sha256_file(staging / "m.onnx")
    assert writer.publish(staging, manifest).version == 1


def test_a_claimed_number_is_known_before_publishing_and_given_back_on_failure(
    registry_root: Path,
) -> None:
    writer = RegistryWriter(registry_root)
    publish_tiny_regression(registry_root)
    claimed = writer.claim("inclination")  # a trainer evaluates under the number it will serve
    assert claimed == 2 and RegistryReader(registry_root).versions("inclination") == [1]
    assert publish_tiny_regression(registry_root).version == 3  # others skip the claim
    staging = writer.stage("inclination")
    (staging / "m.onnx").write_bytes(b"model")
    manifest = Manifest(task="inclination", version=1, input=InputSpec(size=8), members=[
        Member(name="m", file="m.onnx", architecture="x", sha256=sha256_file(staging / "m.onnx"))])
    assert writer.publish(staging, manifest, claimed=claimed).version == 2
    again = writer.stage("inclination")
    (again / "m.onnx").write_bytes(b"model")
    with pytest.raises(ModelIntegrityError, match="not an empty claim"):
        writer.publish(again, manifest, claimed=2)
    given_back = writer.claim("inclination")
    writer.unclaim("inclination", given_back)
    assert not (registry_root / "inclination" / str(given_back)).exists()
    writer.unclaim("inclination", 2)  # a published version is never removed
    assert RegistryReader(registry_root).versions("inclination") == [1, 2, 3]


def test_unknown_names_and_versions(registry_root: Path) -> None:
    reader = RegistryReader(registry_root)
    with pytest.raises(UnknownTask):
        reader.latest("inclination")
    with pytest.raises(UnknownTask):
        reader.versions("../etc")
    publish_tiny_regression(registry_root)
    with pytest.raises(UnknownModelVersion):
        reader.manifest("inclination", 5)
