"""Every committed default model, served from one job by a real worker.

One upload asks for all four seed tasks; the prefork worker answers each from the
latest version under ``models/``. The answers must be well formed for their kind,
the same image must get the same sampled answer, and the defaults must tell apart
what they were trained to tell apart.
"""

from __future__ import annotations

import math

import pytest

from shared.registry import RegistryReader
from shared.taskdefs import get_task_definition
from tests.helpers.requirements import require_module
from tests.integration.conftest import DEFAULT_MODELS, Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
morphology = require_module("services.trainer.data.morphology", extra="trainer")
galaxies = require_module("services.trainer.data.galaxies", extra="trainer")

SEED_TASKS = ("inclination", "rejection", "morphology", "object-type")


def _finished(stack: Stack, data: bytes, tasks: str) -> dict:
    resp = stack.client.post("/v1/jobs", files={"file": ("image.png", data, "image/png")},
                             data={"tasks": tasks})
    assert resp.status_code == 202, resp.text
    for _ in range(60):
        job = stack.client.get(resp.headers["location"], params={"wait": 5}).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", job["error"]
            return job["result"]
    raise AssertionError(f"job never finished: {job}")


def _scene_pngs(kind: str, accept, count: int = 1, seeds=range(2000)) -> list[bytes]:
    """The first ``count`` morphology scenes of ``kind`` whose truth ``accept`` takes."""
    found = []
    for seed in seeds:
        scene = morphology.render_morphology(seed, kind=kind)
        if accept(scene.truth):
            found.append(morphology.encode_png(scene.image))
            if len(found) == count:
                return found
    raise AssertionError(f"only {len(found)} {kind} scenes fit in {seeds}")


def test_every_seed_task_has_a_committed_default() -> None:
    assert set(SEED_TASKS) <= set(RegistryReader(DEFAULT_MODELS).tasks())


def test_one_upload_answers_all_four_tasks(stack: Stack) -> None:
    result = _finished(stack, galaxies.render_galaxy_png(70.0, seed=5), ",".join(SEED_TASKS))
    reader = RegistryReader(DEFAULT_MODELS)
    assert set(result["tasks"]) == set(SEED_TASKS)
    for name in SEED_TASKS:
        answer, manifest = result["tasks"][name], reader.manifest(name)
        assert answer["model_version"] == manifest.version == result["models"][name]
        assert [m["member"] for m in answer["members"]] == [m.name for m in manifest.members]
        assert f"infer:{name}" in result["timings_ms"]

    incl = result["tasks"]["inclination"]
    assert 45.0 <= incl["value"] <= 90.0 and abs(incl["value"] - 70.0) < 10.0, incl

    rejection = result["tasks"]["rejection"]
    labels = get_task_definition("rejection").output_names
    assert list(rejection["probabilities"]) == labels
    assert all(0.0 <= p <= 1.0 for p in rejection["probabilities"].values())
    # A clean, well-resolved galaxy at 70 degrees is no reason to reject the image.
    assert rejection["probabilities"]["reject"] < 0.5, rejection["probabilities"]

    kinds = result["tasks"]["object-type"]
    classes = get_task_definition("object-type").labels
    assert set(kinds["probabilities"]) == set(classes)
    assert math.isclose(sum(kinds["probabilities"].values()), 1.0, abs_tol=1e-4)
    assert kinds["value"] == max(kinds["probabilities"], key=kinds["probabilities"].get)

    tree = get_task_definition("morphology").vote_tree
    morph = result["tasks"]["morphology"]
    assert set(morph["questions"]) == {q.name for q in tree.questions}
    for q in tree.questions:
        answer = morph["questions"][q.name]
        assert list(answer["fractions"]) == q.answers
        assert math.isclose(sum(answer["fractions"].values()), 1.0, abs_tol=1e-4)
        if q.depends_on is None:
            assert answer["reached"] == pytest.approx(1.0)
        else:
            parent, choice = q.depends_on.split(":")
            above = morph["questions"][parent]
            assert answer["reached"] == pytest.approx(above["reached"] * above["fractions"][choice],
                                                      rel=1e-4)


def test_the_same_image_gets_the_same_sampled_answer(stack: Stack) -> None:
    # MC-dropout masks are drawn per image and model version, not per request.
    (png,) = _scene_pngs("disk", lambda t: t["spiral"] and t["quality"] > 0.6)
    first = _finished(stack, png, "morphology")["tasks"]["morphology"]
    again = _finished(stack, png, "morphology")["tasks"]["morphology"]
    assert first["questions"] == again["questions"]


def test_morphology_tells_round_ellipticals_from_face_on_spirals(stack: Stack) -> None:
    ellipticals = _scene_pngs("elliptical", lambda t: t["axis_ratio"] > 0.8 and t["quality"] > 0.5,
                              count=4)
    spirals = _scene_pngs("disk", lambda t: t["spiral"] and t["inclination_deg"] < 40.0
                          and t["quality"] > 0.5 and t["bulge_fraction"] < 0.2, count=4)
    smooth = {}
    for name, pngs in (("elliptical", ellipticals), ("spiral", spirals)):
        answers = [_finished(stack, png, "morphology")["tasks"]["morphology"] for png in pngs]
        root = [a["questions"]["smooth-or-featured"]["fractions"] for a in answers]
        smooth[name] = sum(r["smooth"] for r in root) / len(root)
    # Simulated volunteers call these ~90 % smooth and ~15 % smooth; the served fractions
    # are pulled towards the mean (see the model card), but must keep them well apart.
    assert smooth["elliptical"] - smooth["spiral"] > 0.2, smooth


def test_an_inclination_of_a_star_cluster_says_it_does_not_apply(stack: Stack) -> None:
    """Real globular-cluster photos (the labelled CSV's ``val`` split), inclination only:
    the answer is flagged from object type and rejection, run in the same job."""
    import csv

    from services.trainer.data.photos import catalog_paths
    from tests.helpers.requirements import require_path

    csv_path, folder = catalog_paths()
    require_path(folder, package="stellarium-data")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        clusters = [r["file"] for r in csv.DictReader(handle)
                    if r["split"] == "val" and r["label"] == "globular_cluster"][:2]
    assert clusters
    for name in clusters:
        result = _finished(stack, (folder / name).read_bytes(), "inclination")
        assert list(result["tasks"]) == ["inclination"], result  # evidence is not returned
        answer = result["tasks"]["inclination"]
        assert answer["applicable"] is False, (name, answer["evidence"])
        assert "not a galaxy" in answer["applicable_reason"] or "face-on" in \
            answer["applicable_reason"], answer["applicable_reason"]
        assert "object-type:top-not-galaxy" in answer["evidence"]
