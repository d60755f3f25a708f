"""Evaluated exactly as served: the trainer's evaluation outputs are the worker's answers.

For the same images and version, what :mod:`services.trainer.evaluate` computes its
metrics from (served values, vote fractions) equals what a real worker answers — a
``SessionCache`` loading the published ONNX files and ``services.worker.answers``
decoding the same PNG bytes — for a regression and for a vote tree with MC dropout.
An image's answer does not depend on the batch it sits in, on either side, and a
published version re-evaluated through ``skyserve-train evaluate`` gives back exactly
the metrics it was published with.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("galsim")

from services.trainer.data.galaxies import render_galaxy_png  # noqa: E402
from services.trainer.data.labelled import LabelledSet  # noqa: E402
from services.trainer.data.morphology import render_morphology, simulate_votes  # noqa: E402
from services.trainer.data.render import encode_png  # noqa: E402
from services.trainer.evaluate import evaluate, outputs, serve  # noqa: E402
from services.trainer.evaluate.regression import regression_metrics  # noqa: E402
from services.trainer.evaluate.vote_tree import confident_questions  # noqa: E402
from services.trainer.export import onnx_ensemble  # noqa: E402
from services.trainer.model.heads import question_spans  # noqa: E402
from services.worker import answers  # noqa: E402
from services.worker.sessions import SessionCache  # noqa: E402
from shared.preprocessing import preprocess  # noqa: E402
from shared.registry import RegistryReader  # noqa: E402
from shared.taskdefs import get_task_definition  # noqa: E402
from tests.trainer.conftest import TinyRegistry  # noqa: E402

MAX_PIXELS = 50_000_000


def _images(task: str) -> tuple[list[bytes], np.ndarray]:
    """PNG bytes of a few synthetic images and their labels (inclinations or vote counts)."""
    if task == "inclination":
        truth = np.linspace(46.0, 89.0, 9)
        return [render_galaxy_png(float(t), seed=i, clean=False, size=64)
                for i, t in enumerate(truth)], truth
    pngs, votes = [], []
    for seed in range(9):
        scene = render_morphology(100 + seed)
        pngs.append(encode_png(scene.image))
        votes.append(simulate_votes(scene.truth, volunteers=40, seed=seed))
    return pngs, np.array(votes)


def _worker(root, task: str, pngs: list[bytes]):  # type: ignore[no-untyped-def]
    """The worker's answers for ``pngs``: all in one batch, and each image alone."""
    cache = SessionCache(RegistryReader(root), providers=["CPUExecutionProvider"],
                         intra_op_threads=1)
    models = {task: cache.get(task)}
    definitions = {task: get_task_definition(task)}
    prepared = [answers.prepare(png, models, max_pixels=MAX_PIXELS) for png in pngs]
    batch = [a[task] for a in answers.answer(definitions, models, prepared, max_batch_size=7)]
    alone = [answers.answer(definitions, models, [p], max_batch_size=64)[0][task]
             for p in prepared]
    return batch, alone


@pytest.mark.slow
@pytest.mark.parametrize("task_name", ["inclination", "morphology"])
def test_evaluation_outputs_equal_the_workers_answers_mc_dropout_included(
    tiny_registry: TinyRegistry, task_name: str, tmp_path
) -> None:
    root = tiny_registry.root
    reader = RegistryReader(root)
    manifest = reader.manifest(task_name)
    task = get_task_definition(task_name)
    if task_name == "morphology":  # the vote tree really samples dropout masks
        assert manifest.output.mc_dropout is not None and manifest.output.mc_dropout.samples > 1
    pngs, labels = _images(task_name)
    x = np.stack([preprocess(png, manifest.input) for png in pngs])
    # The same fast path as the worker: the members fused into one session.
    runners = onnx_ensemble(manifest, reader.version_dir(task_name, manifest.version), threads=2)
    assert not isinstance(runners, list), "the tiny members did not fuse"

    # The trainer's side: what its evaluation computes metrics from.
    trainer = serve(task, manifest, runners, x)
    # The worker's side: the published files, the worker's own decoding and answers.
    batch, alone = _worker(root, task_name, pngs)
    served = outputs(task, batch)
    np.testing.assert_allclose(trainer.values, served, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(outputs(task, alone), served, rtol=1e-6, atol=1e-7)
    # Inside the trainer too, the batch an image sits in changes nothing.
    one_by_one = np.concatenate([serve(task, manifest, runners, x[i : i + 1],
                                       max_batch_size=3).values for i in range(len(x))])
    np.testing.assert_allclose(one_by_one, trainer.values, rtol=1e-6, atol=1e-7)
    if task_name == "morphology":
        spread = [max(q.spread.values()) for a in batch for q in a.questions.values()]  # type: ignore[union-attr]
        assert max(spread) > 0  # members x MC samples really differ

    # And the published kind of metric, computed by evaluate(), is the worker's answers' metric.
    test = LabelledSet(x=x, y=labels, ids=[f"img{i}" for i in range(len(x))],
                       truth=[{} for _ in x], description={"split": "test"}, task=task_name)
    _, metrics = evaluate(task, manifest, runners, test, tmp_path, calibrate=False)
    if task.kind == "regression":
        assert metrics["rms_deg"] == pytest.approx(
            regression_metrics(labels, served[:, 0])["rms_deg"], rel=1e-6)
    else:
        counts = labels.astype(np.float64)
        confident = confident_questions(task, counts)
        errors = []
        for (a, b), sure in zip(question_spans(task), confident.T):
            observed = counts[:, a:b] / np.maximum(counts[:, a:b].sum(1, keepdims=True), 1.0)
            errors.append(np.abs(served[:, a:b] - observed)[sure].ravel())
        assert metrics["vote_fraction_mae"] == pytest.approx(
            float(np.concatenate(errors).mean()), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("task_name", "headline"), [("inclination", "rms_deg"),
                                                     ("morphology", "vote_fraction_mae")])
def test_a_published_version_re_evaluated_as_served_gives_its_published_metrics(
    tiny_registry: TinyRegistry, task_name: str, headline: str, tmp_path
) -> None:
    from typer.testing import CliRunner

    from services.trainer.cli import app

    result = CliRunner().invoke(app, ["evaluate", task_name, "1", "--models-dir",
                                      str(tiny_registry.root), "--workers", "1",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "metrics.json").read_text())
    published = RegistryReader(tiny_registry.root).manifest(task_name).metrics
    compared = [k for k, v in published.items() if isinstance(v, float) and k in again]
    assert headline in compared
    for key in compared:  # same held-out images (rebuilt from the recorded recipe), same answers
        assert again[key] == pytest.approx(published[key], rel=1e-12, abs=1e-12), key


@pytest.mark.slow
def test_republishing_keeps_the_members_and_refits_what_the_release_path_fits(
    tiny_registry: TinyRegistry, tmp_path
) -> None:
    import shutil

    from typer.testing import CliRunner

    from services.trainer.cli import app

    root = tmp_path / "models"
    shutil.copytree(tiny_registry.root / "inclination", root / "inclination")
    published = (root / "inclination" / "1" / "manifest.json").read_bytes()
    result = CliRunner().invoke(app, ["republish", "inclination", "1", "--models-dir",
                                      str(root), "--workers", "1"])
    assert result.exit_code == 0, result.output
    reader = RegistryReader(root)
    old, new = reader.manifest("inclination", 1), reader.manifest("inclination", 2)
    assert (root / "inclination" / "1" / "manifest.json").read_bytes() == published
    assert [m.sha256 for m in new.members] == [m.sha256 for m in old.members]
    assert new.training["republished_from"]["version"] == 1
    assert new.training["recipe"] == old.training["recipe"]
    # The release path's own fit, redone on the same validation set, gives the same numbers.
    assert new.calibration is not None and old.calibration is not None
    for key in ("bias_m", "bias_b", "error_floor", "error_spread_scale"):
        assert getattr(new.calibration, key) == pytest.approx(getattr(old.calibration, key))
    for key in ("rms_deg", "mae_deg", "error_coverage_1sigma", "error_coverage_2sigma"):
        assert new.metrics[key] == pytest.approx(old.metrics[key], rel=1e-9), key
    assert 0.0 < new.metrics["error_coverage_1sigma"] <= new.metrics["error_coverage_2sigma"]
