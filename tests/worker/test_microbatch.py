"""Micro-batching of single-image jobs, in this process with real ONNX Runtime sessions.

The grouping is driven here by threads that play concurrent jobs (each marks itself
preparing, as the predict task does, then hands its image over); what a real worker
process with a threads pool does with messages from a real broker is checked in
``test_microbatch_process.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from services.worker.answers import answer
from services.worker.microbatch import MicroBatcher
from services.worker.sessions import LoadedModel, SessionCache
from shared.errors import NonFiniteAnswer, SkyserveError
from shared.registry import Manifest, RegistryReader
from shared.schemas import TaskResult
from tests.worker.onnx_models import SIZE, publish

CPU = ["CPUExecutionProvider"]


@pytest.fixture
def sessions(registry_root: Path, regression_v1: Manifest) -> Iterator[SessionCache]:
    yield SessionCache(
        RegistryReader(registry_root), providers=CPU, intra_op_threads=1, poll_seconds=0
    )


def batcher(max_size: int = 8, max_wait_s: float = 30.0) -> MicroBatcher:
    # A long wait: a group runs because every job joined it, never because time passed.
    return MicroBatcher(max_size=max_size, max_wait_s=max_wait_s, max_batch_size=32, timeout_s=60.0)


def images(count: int, seed: int = 3) -> list[dict[str, np.ndarray]]:
    """Prepared images (as ``answers.prepare`` returns them) for the test manifest."""
    rng = np.random.default_rng(seed)
    return [{"spec": rng.random((SIZE, SIZE, 3), dtype=np.float32)} for _ in range(count)]


def keyed(model: LoadedModel, image: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {model.manifest.input.model_dump_json(): image["spec"]}


def concurrently(
    count: int, job: Callable[[int, threading.Barrier], TaskResult]
) -> list[TaskResult | Exception]:
    """Run ``job(k)`` in ``count`` threads that all mark themselves preparing first."""
    barrier = threading.Barrier(count)

    def run(k: int) -> TaskResult | Exception:
        try:
            return job(k, barrier)
        except SkyserveError as exc:  # the job's own failure is its outcome
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def alone(sessions: SessionCache, model: LoadedModel, image: dict[str, np.ndarray]) -> TaskResult:
    """The answer this image gets as a job on its own (today's path, no batcher)."""
    (answers,) = answer(
        sessions.task_definitions, {"inclination": model}, [keyed(model, image)], max_batch_size=32
    )
    return answers["inclination"]


def numbers(result: TaskResult) -> list[float]:
    return [result.value, *(m.value for m in result.members)]


def test_jobs_prepared_together_share_one_run_and_get_their_own_answers(
    sessions: SessionCache,
) -> None:
    model = sessions.get("inclination")
    pictures = images(6)
    mb = batcher()

    def job(k: int, barrier: threading.Barrier) -> TaskResult:
        with mb.preparing():
            barrier.wait()  # all six are on their way before any hands its image over
            got = mb.answer(
                sessions.task_definitions, {"inclination": model}, keyed(model, pictures[k])
            )
        return got["inclination"]

    together = concurrently(6, job)

    figures = mb.figures()
    assert (figures["runs"], figures["images"], figures["largest"]) == (1, 6, 6)
    for k, result in enumerate(together):
        assert isinstance(result, TaskResult), result
        assert numbers(result) == pytest.approx(
            numbers(alone(sessions, model, pictures[k])), abs=1e-6
        )


def test_groups_hold_at_most_max_size_images(sessions: SessionCache) -> None:
    model = sessions.get("inclination")
    pictures = images(7)
    mb = batcher(max_size=3)

    def job(k: int, barrier: threading.Barrier) -> TaskResult:
        with mb.preparing():
            barrier.wait()
            return mb.answer(
                sessions.task_definitions, {"inclination": model}, keyed(model, pictures[k])
            )["inclination"]

    results = concurrently(7, job)

    figures = mb.figures()
    assert all(isinstance(r, TaskResult) for r in results), results
    assert figures["images"] == 7 and figures["largest"] <= 3 and figures["runs"] >= 3


def test_a_job_does_not_wait_longer_than_max_wait_for_one_still_preparing(
    sessions: SessionCache,
) -> None:
    model = sessions.get("inclination")
    (picture,) = images(1)
    mb = batcher(max_wait_s=0.05)
    slow_one_may_leave = threading.Event()
    submitted = threading.Event()

    def slow_to_prepare() -> None:  # a job stuck decoding a huge image, say
        with mb.preparing():
            submitted.set()
            slow_one_may_leave.wait(30)

    straggler = threading.Thread(target=slow_to_prepare)
    straggler.start()
    try:
        submitted.wait(10)
        with mb.preparing():
            got = mb.answer(
                sessions.task_definitions, {"inclination": model}, keyed(model, picture)
            )
        # Answered while the other job was still preparing: the wait ran out.
        assert straggler.is_alive()
        assert numbers(got["inclination"]) == pytest.approx(
            numbers(alone(sessions, model, picture)), abs=1e-6
        )
    finally:
        slow_one_may_leave.set()
        straggler.join()


def test_a_lone_job_runs_in_its_own_thread(sessions: SessionCache) -> None:
    model = sessions.get("inclination")
    (picture,) = images(1)
    mb = batcher()
    with mb.preparing():
        mb.answer(sessions.task_definitions, {"inclination": model}, keyed(model, picture))
    # No hand-over happened: the collector thread was never needed.
    assert mb._thread is None
    assert mb.figures()["runs"] == 1


def test_off_every_job_is_its_own_run(sessions: SessionCache) -> None:
    model = sessions.get("inclination")
    pictures = images(4)
    mb = batcher(max_size=1)

    def job(k: int, barrier: threading.Barrier) -> TaskResult:
        with mb.preparing():
            barrier.wait()
            return mb.answer(
                sessions.task_definitions, {"inclination": model}, keyed(model, pictures[k])
            )["inclination"]

    results = concurrently(4, job)

    assert all(isinstance(r, TaskResult) for r in results)
    assert (mb.figures()["runs"], mb.figures()["largest"]) == (4, 1)


def log_of_mean_model(path: Path, *, size: int = SIZE) -> None:
    """image → log(mean − 0.5), shape (N, 1): NaN for an image darker than mid-grey."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Reshape", ["m", "shape"], ["m2"]),
            helper.make_node("Sub", ["m2", "half"], ["d"]),
            helper.make_node("Log", ["d"], ["out"]),
        ],
        "log_of_mean",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])],
        initializer=[
            numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "shape"),
            numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def test_a_non_finite_answer_fails_only_its_own_job(tmp_path: Path) -> None:
    root = tmp_path / "models"
    publish(root, {"m0": log_of_mean_model}, tta=("identity",))
    sessions = SessionCache(RegistryReader(root), providers=CPU, intra_op_threads=1, poll_seconds=0)
    model = sessions.get("inclination")
    bright = {"spec": np.full((SIZE, SIZE, 3), 0.9, dtype=np.float32)}
    dark = {"spec": np.full((SIZE, SIZE, 3), 0.1, dtype=np.float32)}
    pictures = [bright, dark, bright]
    mb = batcher()

    def job(k: int, barrier: threading.Barrier) -> TaskResult:
        with mb.preparing():
            barrier.wait()
            return mb.answer(
                sessions.task_definitions, {"inclination": model}, keyed(model, pictures[k])
            )["inclination"]

    results = concurrently(3, job)

    assert mb.figures()["runs"] == 1  # one run, three outcomes
    assert isinstance(results[0], TaskResult) and isinstance(results[2], TaskResult)
    assert isinstance(results[1], NonFiniteAnswer) and "NaN or infinity" in results[1].detail
