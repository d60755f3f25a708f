"""Synthetic rejection and morphology scenes: exact truth, label formats, volunteer votes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.trainer.data import morphology, rejection
from services.trainer.data.labelled import LabelledSet
from shared.preprocessing import preprocess
from shared.registry import InputSpec
from shared.taskdefs import get_task_definition

SPEC = InputSpec(size=32)
REJECTION = get_task_definition("rejection").output_names
MORPHOLOGY = get_task_definition("morphology")


@pytest.fixture(scope="module")
def rejection_set() -> LabelledSet:
    return rejection.rejection_set(40, seed=7, spec=SPEC)


@pytest.fixture(scope="module")
def morphology_set() -> LabelledSet:
    return morphology.morphology_set(24, seed=7, spec=SPEC, volunteers=40)


def test_rejection_labels_format_and_balance(rejection_set: LabelledSet) -> None:
    ds = rejection_set
    assert ds.x.shape == (40, 32, 32, 3) and ds.x.dtype == np.float32
    assert ds.y.shape == (40, 6) and ds.y.dtype == np.float32
    assert set(np.unique(ds.y)) <= {0.0, 1.0}
    assert ds.label_names == REJECTION and ds.task == "rejection"
    assert len(set(ds.ids)) == 40 and len(ds.truth) == 40
    # reject is exactly "any reason"
    np.testing.assert_array_equal(ds.y[:, 0], ds.y[:, 1:].max(axis=1))
    # every reason has positives and negatives even in a small set
    positives = ds.y.sum(axis=0)
    assert (positives > 0).all() and (positives < 40).all(), dict(zip(REJECTION, positives))
    assert ds.description["positives"] == dict(zip(REJECTION, positives.astype(int).tolist()))
    json.dumps([ds.truth, ds.description], allow_nan=False)  # manifest- and plot-ready


def test_rejection_truth_is_exact(rejection_set: LabelledSet) -> None:
    for row, truth in zip(rejection_set.y, rejection_set.truth):
        labels = dict(zip(REJECTION, row.astype(bool)))
        outside = truth["outside_fraction"]
        inclination = truth["inclination_deg"]
        assert 0.0 <= inclination <= 90.0
        assert not rejection.FACE_ON_GAP_DEG[0] < inclination < rejection.FACE_ON_GAP_DEG[1]
        assert labels["low_snr"] == (truth["snr"] < rejection.LOW_SNR_RANGE[1])
        # a shape is judged only where it shows: not too faint, mostly in the frame
        shape_seen = not labels["low_snr"] and (
            outside is None or outside < rejection.SHAPE_HIDDEN_FRACTION)
        assert labels["face_on"] == (shape_seen and inclination < 45.0)
        assert labels["bright_star"] == (truth["star"] is not None)
        if labels["bright_star"]:
            assert truth["star"]["flux_ratio"] >= 1.0
            assert truth["star"]["flux_ratio"] * truth["snr"] >= rejection.STAR_MIN_SNR - 1e-6
        assert labels["multiple_galaxies"] == (truth["second_galaxy"] is not None)
        cut = outside is not None and outside >= rejection.EDGE_CUT_FRACTION
        assert labels["edge_cut"] == cut
        if outside is not None and not cut:  # moved to an edge: clearly not cut
            assert outside <= rejection.EDGE_CLEAR_FRACTION
        if labels["low_snr"]:  # nothing else about a too-faint galaxy can be seen
            assert not (labels["multiple_galaxies"] or labels["edge_cut"] or outside)
        assert truth["reasons"] == [r for r in rejection.REASONS if labels[r]]
    inclinations = [t["inclination_deg"] for t in rejection_set.truth]
    assert min(inclinations) < 20 and max(inclinations) > 70  # the full 0–90° range


def test_rejection_is_deterministic(rejection_set: LabelledSet) -> None:
    again = rejection.rejection_set(6, seed=7, spec=SPEC)
    np.testing.assert_array_equal(again.x, rejection_set.x[:6])
    np.testing.assert_array_equal(again.y, rejection_set.y[:6])
    other = rejection.rejection_set(2, seed=8, spec=SPEC)
    assert not np.array_equal(other.x, again.x[:2])


@pytest.mark.parametrize("reasons", [set(), *({r} for r in rejection.REASONS),
                                     {"bright_star", "edge_cut", "face_on"}])
def test_forced_reasons(reasons: set[str]) -> None:
    scene = rejection.render_rejection(11, reasons=reasons)
    labels = scene.truth["labels"]
    assert {r for r in rejection.REASONS if labels[r]} == reasons
    assert labels["reject"] == bool(reasons)
    if "bright_star" in reasons:  # the star saturates: flat top at the white (or black) end
        assert scene.truth["star"]["peak_over_full_well"] > 1.0
        assert (scene.image == (0 if scene.truth["invert"] else 255)).any()


def test_render_pngs_go_through_preprocess() -> None:
    for png in (rejection.render_rejection_png({"multiple_galaxies"}, 3),
                morphology.render_morphology_png("disk", 3)):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert preprocess(png, SPEC).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="Unknown rejection"):
        rejection.render_rejection_png({"cosmic_ray"}, 0)
    with pytest.raises(ValueError, match="too-faint galaxy"):
        rejection.render_rejection_png({"low_snr", "edge_cut"}, 0)
    with pytest.raises(ValueError, match="Unknown morphology"):
        morphology.render_morphology_png("lenticular", 0)


def _check_tree(counts: np.ndarray, volunteers: int) -> None:
    """Root sums to the volunteers; every question's votes equal its parent answer's count."""
    column = {name: i for i, name in enumerate(MORPHOLOGY.output_names)}
    assert MORPHOLOGY.vote_tree is not None
    for question in MORPHOLOGY.vote_tree.questions:
        total = sum(counts[column[f"{question.name}:{a}"]] for a in question.answers)
        asked = volunteers if question.depends_on is None else counts[column[question.depends_on]]
        assert total == asked <= volunteers, question.name


def test_morphology_votes_follow_the_tree(morphology_set: LabelledSet) -> None:
    ds = morphology_set
    assert ds.y.shape == (24, 17) and ds.y.dtype == np.int32 and (ds.y >= 0).all()
    assert ds.label_names == MORPHOLOGY.output_names
    for counts in ds.y:
        _check_tree(counts, 40)
    root = [MORPHOLOGY.output_names.index(f"smooth-or-featured:{a}")
            for a in ("smooth", "featured-or-disk", "artifact")]
    np.testing.assert_array_equal(ds.y[:, root].sum(axis=1), 40)
    # unreached questions get nothing: no "featured" votes → no edge-on votes, and so on
    edge_on = [MORPHOLOGY.output_names.index(f"disk-edge-on:{a}") for a in ("yes", "no")]
    none_featured = ds.y[:, root[1]] == 0
    assert (ds.y[none_featured][:, edge_on] == 0).all()
    kinds = {t["kind"] for t in ds.truth}
    assert {"elliptical", "disk"} <= kinds
    json.dumps([ds.truth, ds.description], allow_nan=False)


def test_morphology_is_deterministic(morphology_set: LabelledSet) -> None:
    again = morphology.morphology_set(4, seed=7, spec=SPEC, volunteers=40)
    np.testing.assert_array_equal(again.x, morphology_set.x[:4])
    np.testing.assert_array_equal(again.y, morphology_set.y[:4])


def test_edge_on_disks_get_edge_on_votes() -> None:
    yes = MORPHOLOGY.output_names.index("disk-edge-on:yes")
    no = MORPHOLOGY.output_names.index("disk-edge-on:no")
    for seed in range(4):
        truth = morphology.render_morphology(seed, kind="edge_on").truth
        assert truth["answers"]["disk-edge-on"] == "yes" and truth["inclination_deg"] >= 80
        # a volunteer who sees the thin disk plainly calls it edge-on
        sharp = {**truth, "quality": 1.0, "apparent_inclination_deg": truth["inclination_deg"]}
        votes = morphology.simulate_votes(sharp, volunteers=40, seed=seed)
        _check_tree(votes, 40)
        assert votes[yes] >= 0.8 * (votes[yes] + votes[no]) > 0


def test_volunteers_answer_from_what_the_served_image_shows() -> None:
    """The same edge-on disks served small look rounder and get fewer edge-on votes
    than served large: volunteers judge the apparent shape, not the hidden truth."""
    yes = MORPHOLOGY.output_names.index("disk-edge-on:yes")
    small, large = [], []
    for seed in range(6):
        coarse = morphology.render_morphology(seed, kind="edge_on", served_size=12).truth
        fine = morphology.render_morphology(seed, kind="edge_on", served_size=128).truth
        assert coarse["inclination_deg"] == fine["inclination_deg"]  # one galaxy
        assert coarse["apparent_axis_ratio"] >= fine["apparent_axis_ratio"] - 0.02
        assert coarse["visible_radius_px"] < fine["visible_radius_px"]
        small.append(morphology.expected_fractions(coarse)[yes])
        large.append(morphology.expected_fractions(fine)[yes])
    assert np.mean(large) > np.mean(small) + 0.1
    # the truth a volunteer cannot see changes nothing: the votes follow the image
    truth = morphology.render_morphology(2, kind="disk").truth
    hidden = {**truth, "inclination_deg": 5.0, "axis_ratio": 0.99, "snr": 1e4}
    np.testing.assert_array_equal(morphology.expected_fractions(truth),
                                  morphology.expected_fractions(hidden))


def test_faint_galaxies_blur_the_votes() -> None:
    # a disk that looks like one (arms, a bar or a flattened shape show)
    truth = next(t for t in (morphology.render_morphology(s, kind="disk").truth
                             for s in range(40)) if t["disk_look"] > 0.6)
    featured = MORPHOLOGY.output_names.index("smooth-or-featured:featured-or-disk")
    sharp = morphology.simulate_votes({**truth, "quality": 1.0}, volunteers=400, seed=1)
    faint = morphology.simulate_votes({**truth, "quality": 0.0}, volunteers=400, seed=1)
    assert sharp[featured] > faint[featured] + 100


def test_a_featureless_round_disk_looks_smooth() -> None:
    """Volunteers call a disk featured by what shows: a round disk with no arms or bar
    showing gets mostly "smooth"; one with plain arms mostly "featured"."""
    featured = MORPHOLOGY.output_names.index("smooth-or-featured:featured-or-disk")
    disks = [morphology.render_morphology(s, kind="disk").truth for s in range(60)]
    plain = [t for t in disks if t["disk_look"] == 0.0 and t["quality"] > 0.8]
    armed = [t for t in disks if t["spiral_visibility"] > 0.8 and t["quality"] > 0.8]
    assert plain and armed
    assert all(morphology.expected_fractions(t)[featured] < 0.2 for t in plain)
    assert all(morphology.expected_fractions(t)[featured] > 0.7 for t in armed)


@pytest.mark.slow
def test_workers_do_not_change_the_data() -> None:
    one = rejection.rejection_set(6, seed=2, spec=SPEC, workers=1)
    two = rejection.rejection_set(6, seed=2, spec=SPEC, workers=2)
    np.testing.assert_array_equal(one.x, two.x)
    np.testing.assert_array_equal(one.y, two.y)
