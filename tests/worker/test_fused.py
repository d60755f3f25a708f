"""The fused fast path answers exactly as the members one by one, for every default model.

Each committed default version under ``models/`` is loaded by a real ``SessionCache``
(real ONNX Runtime sessions), once fused (:mod:`shared.fused`, what the worker and
the trainer's evaluation run) and once member by member; on real preprocessed PNGs
their raw outputs and their answers agree, MC-dropout masks included, and an image
gets the same answer alone or anywhere in any batch.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from services.worker.sessions import LoadedModel, SessionCache
from services.worker.settings import WorkerSettings
from shared.fused import fuse_version
from shared.members import answer, probe_images, run_members
from shared.preprocessing import preprocess
from shared.registry import RegistryReader
from shared.settings import REPO_ROOT
from shared.taskdefs import get_task_definition
from tests.helpers.images import png_bytes

MODELS = REPO_ROOT / "models"
DEFAULTS = RegistryReader(MODELS).tasks()


def _cache() -> SessionCache:
    return SessionCache(RegistryReader(MODELS), providers=["CPUExecutionProvider"],
                        intra_op_threads=1, spinning=False)


@pytest.fixture(scope="module")
def loaded() -> dict[str, LoadedModel]:
    cache = _cache()
    return {task: cache.get(task) for task in DEFAULTS}


def _images(model: LoadedModel, count: int = 9) -> np.ndarray:
    """Real PNGs (ellipses at several axis ratios and sizes) through preprocessing."""
    pngs = [png_bytes(96 + 8 * i, axis_ratio=0.25 + 0.08 * i, seed=i)
            for i in range(count)]
    return np.stack([preprocess(png, model.manifest.input) for png in pngs])


def test_the_four_defaults_are_there() -> None:
    assert set(DEFAULTS) >= {"inclination", "rejection", "morphology", "object-type"}


@pytest.mark.parametrize("task", DEFAULTS)
def test_every_default_version_is_served_fused(loaded: dict[str, LoadedModel], task: str) -> None:
    model = loaded[task]
    assert model.fused is not None
    assert model.ensemble() is model.fused
    assert model.fused.names == tuple(m.name for m in model.manifest.members)


@pytest.mark.parametrize("task", DEFAULTS)
def test_fused_outputs_equal_the_members_one_by_one(
    loaded: dict[str, LoadedModel], task: str
) -> None:
    model = loaded[task]
    x = np.concatenate([_images(model), probe_images(model.manifest.input)])
    fused = run_members(model.manifest, model.ensemble(), x, max_batch_size=32)
    plain = run_members(model.manifest, model.runners(), x, max_batch_size=32)
    assert set(fused) == set(plain)
    for name in plain:
        assert fused[name].shape == plain[name].shape
        scale = 1.0 + np.abs(plain[name])
        assert np.max(np.abs(fused[name] - plain[name]) / scale) < 1e-5, name
    if model.manifest.output.mc_dropout:  # the samples really differ, in both
        for raw in (fused, plain):
            assert np.ptp(raw[next(iter(raw))], axis=0).max() > 1e-3

    definition = get_task_definition(task)
    fast, _ = answer(definition, model.manifest, model.ensemble(), x, max_batch_size=32)
    slow, _ = answer(definition, model.manifest, model.runners(), x, max_batch_size=32)
    for a, b in zip(fast, slow, strict=True):
        _close(a.model_dump(), b.model_dump(), 1e-4)


@pytest.mark.parametrize("task", DEFAULTS)
def test_an_image_gets_the_same_answer_alone_or_in_any_batch(
    loaded: dict[str, LoadedModel], task: str
) -> None:
    model = loaded[task]
    x = _images(model, 7)
    order = np.random.default_rng(3).permutation(len(x))
    together = run_members(model.manifest, model.ensemble(), x, max_batch_size=128)
    chunked = run_members(model.manifest, model.ensemble(), x[order], max_batch_size=5)
    for i in range(len(x)):
        alone = run_members(model.manifest, model.ensemble(), x[i : i + 1], max_batch_size=1)
        where = int(np.flatnonzero(order == i)[0])
        for name, out in alone.items():
            # Raw logits reach ~25; ONNX Runtime's kernels round differently by batch size.
            np.testing.assert_allclose(out[:, 0], together[name][:, i], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(out[:, 0], chunked[name][:, where], rtol=1e-5, atol=1e-5)


def test_shared_work_runs_once_in_the_fused_graph(loaded: dict[str, LoadedModel]) -> None:
    """The moment branch (no weights, the same in every member) is in the graph once."""
    from shared.fused import fuse

    model = loaded["inclination"]
    folder = RegistryReader(MODELS).version_dir("inclination", model.version)
    graphs = [onnx.load(folder / m.file) for m in model.manifest.members]

    def count(graph: onnx.ModelProto, op: str, within: str = "") -> int:
        return sum(n.op_type == op and within in n.name for n in graph.graph.node)

    one = fuse(graphs[:1], input_name="image", transforms=model.manifest.tta)
    every = fuse(graphs, input_name="image", transforms=model.manifest.tta)
    members = len(graphs)
    assert members >= 2
    assert count(one, "MatMul", "/moments") > 0
    assert count(every, "MatMul", "/moments") == count(one, "MatMul", "/moments")
    assert count(every, "Sigmoid", "/moments") == count(one, "Sigmoid", "/moments")
    assert count(every, "Conv") == members * count(one, "Conv") == members * count(graphs[0], "Conv")


def test_a_graph_that_disagrees_is_served_member_by_member(
    loaded: dict[str, LoadedModel],
) -> None:
    model = loaded["rejection"]
    folder = RegistryReader(MODELS).version_dir("rejection", model.version)
    graphs = [onnx.load(folder / m.file) for m in model.manifest.members]
    plain = model.runners()
    assert fuse_version(model.manifest, graphs, _ort_session, plain) is not None
    # Members in the wrong order answer differently: the check on load refuses the graph.
    assert fuse_version(model.manifest, graphs[::-1], _ort_session, plain) is None
    # A session that cannot run the fused graph is refused too (the members serve).
    assert fuse_version(model.manifest, graphs, lambda _: plain[0].session, plain) is None


def _ort_session(graph: bytes):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    return ort.InferenceSession(graph, providers=["CPUExecutionProvider"])


def test_session_settings_follow_the_processes_per_host() -> None:
    one = WorkerSettings(worker_processes=1, _env_file=None)  # type: ignore[call-arg]
    two = WorkerSettings(worker_processes=2, _env_file=None)  # type: ignore[call-arg]
    assert one.spinning() and not two.spinning()
    assert two.threads_per_process() == max(1, one.threads_per_process() // 2)
    assert WorkerSettings(intra_op_threads=3, worker_processes=2).threads_per_process() == 3
    assert WorkerSettings(worker_processes=2, onnx_spinning=True).spinning()


def _close(a: object, b: object, tolerance: float, path: str = "") -> None:
    """Two dumped answers equal: numbers within ``tolerance`` (relative above 1), the rest exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), path
        for key in a:
            _close(a[key], b[key], tolerance, f"{path}.{key}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, tolerance, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert abs(a - b) <= tolerance * max(1.0, abs(b)), (path, a, b)
    else:
        assert a == b, path


def test_the_evidence_pass_has_its_own_fused_graph_that_answers_as_its_members(
    loaded: dict[str, LoadedModel],
) -> None:
    """The applicability evidence pass (identity only, one sample) gets a fused graph of
    its own, equal to its members run one by one; the version's fused graph, which makes
    the manifest's own transforms, fails loudly when asked for another pass."""
    from services.worker.answers import evidence_model

    for task in ("object-type", "morphology"):
        model = loaded[task]
        evidence = evidence_model(model)
        assert evidence.fused is not None and evidence.manifest.tta == ["identity"]
        x = _images(model, 3)
        fused = run_members(evidence.manifest, evidence.ensemble(), x, max_batch_size=8)
        plain = run_members(evidence.manifest, evidence.runners(), x, max_batch_size=8)
        for name, out in plain.items():
            assert out.shape[:2] == (1, 3)
            np.testing.assert_allclose(fused[name], out, atol=1e-4, rtol=0)
        with pytest.raises(ValueError, match="fused graph was built for"):
            run_members(evidence.manifest, model.ensemble(), x, max_batch_size=8)
