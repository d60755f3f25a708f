"""SessionCache: lazy loading, checksum verification, following and falling back across versions."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from services.worker.sessions import SessionCache
from shared.errors import ModelIntegrityError, UnknownModelVersion, UnknownTask
from shared.registry import Manifest, RegistryReader, sha256_file
from tests.worker.onnx_models import (
    SIZE,
    member_file,
    publish,
    ramp_weights,
    regression_members,
    weighted_tanh_model,
)


class Clock:
    """A hand-driven monotonic clock, so poll intervals are tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_cache(
    root: Path, *, poll_seconds: float = 30.0, clock: Clock | None = None, **kw
) -> SessionCache:
    return SessionCache(
        RegistryReader(root),
        providers=["CPUExecutionProvider"],
        intra_op_threads=1,
        poll_seconds=poll_seconds,
        clock=clock or Clock(),
        **kw,
    )


def tamper(path: Path) -> None:
    """Change one byte of a published file (the manifest's sha256 no longer matches)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def publish_unloadable(root: Path) -> Manifest:
    """A version whose checksums match but whose file is not an ONNX model."""
    manifest = publish(root, regression_members())
    path = member_file(root, manifest, 1)
    path.write_bytes(b"this is not an onnx model")
    manifest_path = path.parent / "manifest.json"
    fixed = manifest.model_copy(deep=True)
    fixed.members[1].sha256 = sha256_file(path)
    manifest_path.write_text(fixed.model_dump_json())
    return fixed


def test_loads_lazily_and_runs(registry_root: Path, regression_v1: Manifest) -> None:
    cache = make_cache(registry_root)
    assert cache.served() == {}

    model = cache.get("inclination")

    assert (model.task, model.version) == ("inclination", 1)
    assert [m.member.name for m in model.members] == ["m0", "m1"]
    assert cache.served() == {"inclination": 1}
    assert "CPUExecutionProvider" in model.providers
    member = model.members[0]
    x = np.full((2, SIZE, SIZE, 3), 0.5, dtype=np.float32)
    (out,) = member.session.run([member.output_name], {member.input_name: x})
    assert out.shape == (2, 1)
    assert cache.get("inclination") is model  # cached, not reloaded


def test_tampered_member_is_rejected(registry_root: Path, regression_v1: Manifest) -> None:
    tamper(member_file(registry_root, regression_v1, 1))
    cache = make_cache(registry_root)

    with pytest.raises(ModelIntegrityError, match="does not match its sha256"):
        cache.get("inclination", 1)
    with pytest.raises(ModelIntegrityError, match="No version of 'inclination' can be served"):
        cache.get("inclination")
    assert cache.served() == {}


@pytest.mark.parametrize("breakage", ["checksum", "unloadable"])
def test_broken_newer_version_keeps_the_old_one(
    registry_root: Path, regression_v1: Manifest, caplog: pytest.LogCaptureFixture, breakage: str
) -> None:
    clock = Clock()
    cache = make_cache(registry_root, poll_seconds=30.0, clock=clock)
    old = cache.get("inclination")

    if breakage == "checksum":
        v2 = publish(registry_root, regression_members())
        tamper(member_file(registry_root, v2, 0))
    else:
        v2 = publish_unloadable(registry_root)
    assert v2.version == 2
    clock.now += 31.0
    with caplog.at_level(logging.ERROR, logger="services.worker.sessions"):
        model = cache.get("inclination")

    assert model is old
    assert cache.served() == {"inclination": 1}
    failures = [r for r in caplog.records if "inclination v2 cannot be served" in r.getMessage()]
    assert failures and failures[0].exc_info is not None
    # A pinned request for the broken version gets a readable reason, not the old model.
    with pytest.raises(ModelIntegrityError, match="v2 cannot be served"):
        cache.get("inclination", 2)


def test_fresh_process_starts_on_the_newest_good_version(
    registry_root: Path, regression_v1: Manifest
) -> None:
    v2 = publish(registry_root, regression_members())
    tamper(member_file(registry_root, v2, 1))

    assert make_cache(registry_root).get("inclination").version == 1


def test_newer_version_is_picked_up_after_the_poll_interval(
    registry_root: Path, regression_v1: Manifest
) -> None:
    clock = Clock()
    cache = make_cache(registry_root, poll_seconds=30.0, clock=clock)
    assert cache.get("inclination").version == 1

    publish(registry_root, regression_members(3))
    clock.now += 10.0
    assert cache.get("inclination").version == 1  # not looked for yet
    clock.now += 21.0
    model = cache.get("inclination")

    assert model.version == 2 and len(model.members) == 3
    assert cache.served() == {"inclination": 2}
    assert cache.get("inclination", 1).version == 1  # an older version can still be pinned


def test_refresh_loads_new_versions_off_the_request_path(
    registry_root: Path, regression_v1: Manifest
) -> None:
    cache = make_cache(registry_root, poll_seconds=0.0)
    assert cache.warm_up() == {"inclination": 1}
    publish(registry_root, regression_members())

    assert cache.refresh() == {"inclination": 2}


def test_pinned_versions_are_bounded(registry_root: Path, regression_v1: Manifest) -> None:
    for _ in range(2):
        publish(registry_root, regression_members())
    cache = make_cache(registry_root, pinned_cached=1)
    latest = cache.get("inclination")
    v1 = cache.get("inclination", 1)
    v2 = cache.get("inclination", 2)  # evicts v1, never the latest

    assert latest.version == 3
    assert cache.get("inclination") is latest
    assert cache.get("inclination", 2) is v2
    assert cache.get("inclination", 1) is not v1  # reloaded after eviction


def test_unknown_task_and_version(registry_root: Path, regression_v1: Manifest) -> None:
    cache = make_cache(registry_root)
    with pytest.raises(UnknownTask):
        cache.get("morphology")
    with pytest.raises(UnknownModelVersion):
        cache.get("inclination", 7)


def test_model_that_does_not_fit_the_manifest_is_not_served(registry_root: Path) -> None:
    # The files are intact, but the model takes 6x6 images while the manifest says 8x8.
    publish(
        registry_root,
        {"m0": lambda p: weighted_tanh_model(p, weights=ramp_weights(1.0, size=6), bias=0.0)},
    )
    with pytest.raises(ModelIntegrityError, match=r"takes \['N', 6, 6, 3\]"):
        make_cache(registry_root).get("inclination", 1)
