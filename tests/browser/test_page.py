"""The page at ``/`` in a real browser, against the real system (Redis, worker, API).

Each test reads what a person reads: the cards' text, the images, the progress bar,
the downloads. Screenshots land in test-output/browser/.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from astropy.io import fits

from shared.registry import RegistryReader
from shared.settings import REPO_ROOT
from tests.browser.conftest import PHONE, RunningSystem, output_dir
from tests.helpers.images import ellipse, encode

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(240)]

#: Result cards of the view on show (other views keep theirs, hidden).
CARDS = "main > section:not([hidden]) article.result"
STELLARIUM_M8 = Path("/usr/share/stellarium/nebulae/default/m8.png")


def _png(tmp_path: Path, name: str, *, axis_ratio: float = 0.35, seed: int = 1, size: int = 96) -> Path:
    path = tmp_path / name
    path.write_bytes(encode(ellipse(size, axis_ratio=axis_ratio, seed=seed)))
    return path


def _fits(tmp_path: Path) -> Path:
    flux = ellipse(96, axis_ratio=0.3, seed=7)[..., 0].astype(np.float32) * 40.0 + 1000.0
    path = tmp_path / "disk.fits"
    fits.PrimaryHDU(flux).writeto(path)
    return path


COMMITTED = RegistryReader(REPO_ROOT / "models")


def _served_rms() -> float:
    """The held-out RMS the serving inclination version's card must show."""
    return float(COMMITTED.manifest("inclination").metrics["rms_deg"])


def _open(page: Any, system: RunningSystem) -> None:
    """The start page, once its question checkboxes have loaded."""
    page.goto(f"{system.url}/")
    page.wait_for_selector("#task-list input[name=task]")


def _finished_card(page: Any, index: int = 0) -> Any:
    """The index-th result card once its job has ended (succeeded or failed)."""
    card = page.locator(CARDS).nth(index)
    card.locator(".pill.succeeded, .pill.failed, .pill.error").wait_for(timeout=60_000)
    # The pill changes first, then the answer is drawn and the card stops being busy.
    page.wait_for_function("el => el.getAttribute('aria-busy') === 'false'",
                           arg=card.element_handle(), timeout=10_000)
    return card


def _job(system: RunningSystem, job_id: str) -> dict:
    return httpx.get(f"{system.url}/v1/jobs/{job_id}", timeout=10).json()


def _seen_image_loaded(card: Any) -> int:
    img = card.locator("figure.seen img")
    img.wait_for()
    card.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    return int(img.evaluate("img => img.naturalWidth"))


def test_png_upload_reads_every_answer(page: Any, system: RunningSystem, tmp_path: Path) -> None:
    _open(page, system)
    page.set_input_files("#file", str(_png(tmp_path, "spiral.png")))
    card = _finished_card(page)
    assert card.locator(".pill").inner_text().lower() == "succeeded"
    job = _job(system, card.get_attribute("data-job"))
    tasks = job["result"]["tasks"]

    incl = card.locator("[data-task=inclination]")
    headline = incl.locator(".headline").inner_text()
    assert f"{tasks['inclination']['value']:.1f}" in headline
    # This answer's calibrated 1σ error, not the members' spread.
    error = tasks["inclination"]["summary"]["error"]
    assert f"± {error:.1f}°" in headline, headline
    assert "1σ error, calibrated on held-out" in incl.inner_text() and "45°" in incl.inner_text()

    verdict = card.locator("[data-task=rejection] .verdict").inner_text()
    expected = "reject" if tasks["rejection"]["value"] >= 0.5 else "keep"
    assert f"likely {expected}" in verdict
    assert card.locator("[data-task=morphology] .question").count() == 6
    assert "reached" in card.locator("[data-task=morphology] .question").first.inner_text()
    object_type = card.locator("[data-task=object-type]")
    assert "unsupported" in object_type.inner_text()
    members = card.locator("[data-task=inclination] details.members")
    members.locator("summary").click()
    assert members.locator("tbody tr").count() == len(COMMITTED.manifest("inclination").members)

    assert _seen_image_loaded(card) == 256
    latest = COMMITTED.latest("inclination")
    assert f"inclination v{latest}" in card.locator("footer").inner_text()
    json_link = card.locator("footer a", has_text="JSON").get_attribute("href")
    assert httpx.get(f"{system.url}/{json_link}", timeout=10).json()["id"] == job["id"]
    page.wait_for_function("document.getElementById('announcer').textContent.includes('Answer for')")

    # The shareable link reloads the same answer on its own page.
    share = card.locator("a.share-link").get_attribute("href")
    page.goto(share)
    shared = _finished_card(page)
    assert shared.get_attribute("data-job") == job["id"]
    assert shared.locator("[data-task=inclination] .headline").inner_text() == headline


def test_fits_upload_is_answered_and_shown(page: Any, system: RunningSystem, tmp_path: Path) -> None:
    _open(page, system)
    page.set_input_files("#file", str(_fits(tmp_path)))
    card = _finished_card(page)
    assert card.locator(".pill").inner_text().lower() == "succeeded", card.inner_text()
    assert _job(system, card.get_attribute("data-job"))["input"]["format"] == "FITS"
    assert card.locator("[data-task=inclination] .headline").inner_text().strip()
    assert _seen_image_loaded(card) == 256  # decoded (asinh-stretched) by the server


def test_m31_by_name_shows_the_resolved_object(page: Any, system: RunningSystem) -> None:
    system.stand_in.clear()
    _open(page, system)
    page.get_by_label("Name", exact=True).check()
    page.get_by_label("Object name").fill("M31")
    page.get_by_label("Object name").press("Enter")
    card = _finished_card(page)
    assert card.locator(".pill").inner_text().lower() == "succeeded", card.inner_text()
    facts = card.locator(".object").inner_text()
    assert "NGC0224" in facts and "M31" in facts and "PGC 2557" in facts
    assert "00h42m" in facts and "+41°" in facts and "35°" in facts  # position and PA
    assert system.stand_in.cutout_requests(), "the worker never asked the cutout stand-in"
    assert _seen_image_loaded(card) > 0


def test_two_overlapping_uploads_each_show_their_own_answer(
    page: Any, system: RunningSystem, tmp_path: Path
) -> None:
    _open(page, system)
    first = _png(tmp_path, "round.png", axis_ratio=0.95, seed=3)
    second = _png(tmp_path, "edge-on.png", axis_ratio=0.15, seed=4, size=120)
    page.set_input_files("#file", str(first))
    page.set_input_files("#file", str(second))  # before the first is answered
    cards = {}
    for index in range(2):
        card = _finished_card(page, index)
        cards[card.locator("h3").first.inner_text()] = card
    assert set(cards) == {"round.png", "edge-on.png"}
    values = set()
    for name, card in cards.items():
        job_id = card.get_attribute("data-job")
        job = _job(system, job_id)
        assert job["input"]["filename"] == name
        value = f"{job['result']['tasks']['inclination']['value']:.1f}"
        assert value in card.locator("[data-task=inclination] .headline").inner_text()
        assert job_id in card.locator("figure.seen img").get_attribute("src")
        values.add(value)
    assert len(values) == 2, "two different galaxies got the same shown answer"


def test_catalog_reaches_100_percent_and_downloads(
    page: Any, system: RunningSystem, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("id,name,note\na,M31,first\nb,M33,second\nc,NoSuchGalaxyAtAll,third\n")
    page.goto(f"{system.url}/#/batch")
    page.wait_for_selector("#batch-task-list input[name=task]")
    page.set_input_files("#catalog-file", str(catalog))
    page.get_by_role("button", name="Run the catalog").click()
    bar = page.locator("#batch-progress")
    page.wait_for_function(
        "() => { const b = document.getElementById('batch-progress');"
        " return b && b.max >= 3 && b.value === b.max; }",
        timeout=90_000,
    )
    assert bar.get_attribute("aria-valuetext") == "100 %"
    assert "100 %" in page.locator("#batch-progress-label").inner_text()
    failed = page.locator("text=Rows that failed (1)")
    failed.wait_for()
    assert "NoSuchGalaxyAtAll" in page.locator("table").first.inner_text()

    with page.expect_download() as download_info:
        page.locator("a[data-format=csv]").click()
    saved = tmp_path / "results.csv"
    download_info.value.save_as(saved)
    rows = list(csv.DictReader(saved.open()))
    assert [(r["id"], r["status"]) for r in rows] == [
        ("a", "succeeded"), ("b", "succeeded"), ("c", "failed"),
    ]  # fmt: skip
    assert rows[0]["object"] == "NGC0224" and rows[0]["note"] == "first"

    with page.expect_download() as download_info:
        page.locator("a[data-format=fits]").click()
    table = tmp_path / "results.fits"
    download_info.value.save_as(table)
    with fits.open(table) as hdul:
        assert isinstance(hdul[1], fits.BinTableHDU) and len(hdul[1].data) == 3


def test_a_bad_file_shows_its_message(page: Any, system: RunningSystem, tmp_path: Path) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("these are my observing notes, not an image")
    _open(page, system)
    page.set_input_files("#file", str(notes))
    card = page.locator(CARDS).first
    card.locator(".notice.bad").wait_for()
    text = card.inner_text()
    assert "not an image skyserve can read" in text, text
    assert card.locator(".spinner").count() == 0
    assert card.get_attribute("aria-busy") == "false"


def test_keyboard_only_upload(page: Any, system: RunningSystem, tmp_path: Path) -> None:
    # Listen before anything happens: Playwright turns on file-chooser interception
    # without waiting for the browser's reply, so a listener added just before the key
    # press can miss the dialog.
    choosers: list[Any] = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    _open(page, system)
    image = _png(tmp_path, "keyboard.png", seed=9)
    for _ in range(40):  # Tab through the page to the upload button, as a person would
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.id") == "choose":
            break
    else:
        pytest.fail("Tab never reached the 'Choose an image' button")
    page.keyboard.press("Enter")
    for _ in range(300):
        if choosers:
            break
        page.wait_for_timeout(100)
    assert choosers, "Enter on 'Choose an image…' opened no file chooser"
    choosers[0].set_files(str(image))
    card = _finished_card(page)
    assert card.locator(".pill").inner_text().lower() == "succeeded"
    # Every input of the form has a label a screen reader reads.
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input')].filter(i => i.type !== 'hidden'
              && !(i.labels && i.labels.length) && !i.getAttribute('aria-label')).map(i => i.id || i.name)"""
    )
    assert unlabelled == []


def test_phone_width_has_no_horizontal_overflow(
    page: Any, system: RunningSystem, tmp_path: Path
) -> None:
    page.set_viewport_size(PHONE)
    _open(page, system)
    page.set_input_files("#file", str(_png(tmp_path, "phone.png", seed=5)))
    card = _finished_card(page)
    card.locator("[data-task=inclination] details.members summary").click()
    _seen_image_loaded(card)
    for hash_ in ("", "#/models/object-type/4", "#/batch", "#/models"):
        if hash_:
            page.goto(f"{system.url}/{hash_}")
            page.wait_for_load_state("networkidle")
        widths = page.evaluate(
            "[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]"
        )
        assert max(widths[:2]) <= PHONE["width"], f"{hash_ or '/'} overflows: {widths}"
        if not hash_:
            page.screenshot(path=str(output_dir() / "phone-answer.png"), full_page=True)


def test_desktop_screenshot_of_a_target_and_an_upload(
    page: Any, system: RunningSystem, tmp_path: Path
) -> None:
    _open(page, system)
    page.set_input_files("#file", str(_png(tmp_path, "galaxy.png", seed=2)))
    _seen_image_loaded(_finished_card(page))
    page.get_by_label("PGC / catalog id").check()
    page.get_by_label("PGC number or catalog id").fill("PGC 2557")
    page.get_by_role("button", name="Look up").first.click()
    page.locator(CARDS).nth(0).locator(".object").wait_for(timeout=60_000)
    _seen_image_loaded(page.locator(CARDS).nth(0))
    page.screenshot(path=str(output_dir() / "desktop-answers.png"), full_page=True)


def test_network_and_server_errors_are_words_not_spinners(
    page: Any, system: RunningSystem, tmp_path: Path
) -> None:
    problem = {"title": "Service Unavailable", "status": 503, "detail": "The registry is being rebuilt."}
    page.route(
        "**/v1/tasks",
        lambda route: route.fulfill(
            status=503, content_type="application/problem+json", body=json.dumps(problem)
        ),
    )
    page.goto(system.url + "/")
    alert = page.locator("#task-list [role=alert]")
    alert.wait_for()
    assert "The registry is being rebuilt." in alert.inner_text()

    page.route("**/v1/jobs", lambda route: route.abort("connectionrefused"))
    page.set_input_files("#file", str(_png(tmp_path, "offline.png")))
    card = page.locator(CARDS).first
    card.locator(".notice.bad").wait_for()
    assert "Cannot reach skyserve" in card.inner_text()
    assert card.locator(".spinner").count() == 0
    assert card.get_by_role("button", name="Try again").is_visible()


def test_no_question_ticked_is_refused(page: Any, system: RunningSystem, tmp_path: Path) -> None:
    _open(page, system)
    for box in page.locator("#task-list input[name=task]").all():
        box.uncheck()
    page.set_input_files("#file", str(_png(tmp_path, "none.png")))
    assert "Tick at least one question" in page.locator("#form-error").inner_text()
    assert page.locator(CARDS).count() == 0


def test_caveat_when_object_type_says_not_a_galaxy(page: Any, system: RunningSystem) -> None:
    if not STELLARIUM_M8.is_file():
        pytest.skip("stellarium-data is not installed (make system-deps)")
    _open(page, system)
    page.set_input_files("#file", str(STELLARIUM_M8))
    card = _finished_card(page)
    job = _job(system, card.get_attribute("data-job"))
    top = job["result"]["tasks"]["object-type"]["value"]
    assert top != "galaxy", "the model takes the Lagoon Nebula for a galaxy"
    caveats = card.locator(".caveats").inner_text()
    assert "not a galaxy" in caveats and top.replace("_", " ") in caveats, caveats


def test_a_not_applicable_answer_is_flagged(page: Any, system: RunningSystem, tmp_path: Path) -> None:
    """An inclination result carrying ``applicable: false`` and a reason is shown as such."""

    def flag(route: Any) -> None:
        response = route.fetch()
        job = response.json()
        if job.get("result"):
            job["result"]["tasks"]["inclination"]["applicable"] = False
            job["result"]["tasks"]["inclination"]["reason"] = "The image shows no disk galaxy."
        route.fulfill(response=response, body=json.dumps(job))

    page.route(re.compile(r".*/v1/jobs/[0-9a-f]{32}\?wait=.*"), flag)
    _open(page, system)
    page.set_input_files("#file", str(_png(tmp_path, "flagged.png")))
    card = _finished_card(page)
    incl = card.locator("[data-task=inclination]")
    assert "does not apply" in incl.inner_text() and "no disk galaxy" in incl.inner_text()
    assert "not applicable" in card.locator(".caveats").inner_text()
    assert card.inner_text().count("no disk galaxy") == 1  # the reason is said once


def test_model_card_pages(page: Any, system: RunningSystem) -> None:
    page.goto(f"{system.url}/#/models")
    # Every published version has a card; the one serving now says so.
    page.get_by_role("link", name=re.compile(r"Spiral galaxy inclination.*\(serving\)")).click()
    page.wait_for_selector("#mc-use")
    text = page.locator("#view-models").inner_text()
    for part in ("Intended use", "Known limitations", "Held-out metrics", "Training data",
                 "Licence and citation", "GalSim", f"{_served_rms():.2f}°",
                 "When an answer does not apply",
                 "Truths within the stated ±1σ"):
        assert part in text, part
    plots = page.locator(".plots img")
    served = COMMITTED
    folder = served.version_dir("inclination", served.latest("inclination"))
    assert plots.count() == len(list(folder.glob("*.png"))) >= 2
    for i in range(plots.count()):
        plots.nth(i).scroll_into_view_if_needed()  # plots load lazily
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=plots.nth(i).element_handle())
    page.goto(f"{system.url}/#/models/object-type/4")
    page.wait_for_selector("#mc-limits")
    assert "reflection nebula, supernova remnant, protoplanetary nebula" in page.locator(
        "#view-models"
    ).inner_text()
    page.goto(f"{system.url}/#/models/object-type/5")
    page.wait_for_selector("#mc-metrics")
    assert "Accuracy, supported classes" in page.locator("#view-models").inner_text()


def test_api_docs_work_offline(page: Any, system: RunningSystem) -> None:
    elsewhere: list[str] = []

    def only_local(route: Any) -> None:
        if route.request.url.startswith(system.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(f"{system.url}/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    assert page.locator(".swagger-ui").inner_text().count("/v1/jobs") >= 1
    page.goto(f"{system.url}/redoc")
    page.wait_for_function(
        "document.body.innerText.includes('Submit an image, a catalogued object')", timeout=30_000
    )
    assert elsewhere == [], f"the docs asked for outside resources: {elsewhere}"


def test_page_works_under_a_proxy_sub_path(page: Any, proxied: Any, tmp_path: Path) -> None:
    page.goto(f"{proxied.url}/skyserve/")
    page.wait_for_selector("#task-list input[name=task]")
    page.set_input_files("#file", str(_png(tmp_path, "proxied.png", seed=6)))
    card = _finished_card(page)
    assert card.locator(".pill").inner_text().lower() == "succeeded", card.inner_text()
    _seen_image_loaded(card)
    assert "/skyserve/#/jobs/" in card.locator("a.share-link").get_attribute("href")
    assert httpx.get(f"{proxied.url}/v1/tasks", timeout=10).status_code == 404  # only /skyserve/
    page.goto(f"{proxied.url}/skyserve/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)


def test_a_suggested_name_is_one_click_away(page: Any, system: RunningSystem) -> None:
    _open(page, system)
    page.get_by_label("Name", exact=True).check()
    page.get_by_label("Object name").fill("Andromeda Galxy")
    page.get_by_label("Object name").press("Enter")
    typo = _finished_card(page)
    assert "No catalogued object" in typo.inner_text()
    # Sending the same typo again cannot help: no "Try again", the suggestion instead.
    assert typo.get_by_role("button", name="Try again").count() == 0
    typo.get_by_role("button", name="Andromeda Galaxy").click()
    looked_up = page.locator(CARDS).first
    looked_up.locator(".pill.succeeded, .pill.failed").wait_for(timeout=60_000)
    assert "NGC0224" in looked_up.locator(".object").inner_text()


def test_a_catalogued_nebula_gets_a_caveat_and_a_tree_names_its_parents(
    page: Any, system: RunningSystem
) -> None:
    _open(page, system)
    page.get_by_label("Name", exact=True).check()
    page.get_by_label("Object name").fill("M42")  # OpenNGC: Cl+N, a star cluster + nebula
    page.get_by_label("Object name").press("Enter")
    card = _finished_card(page)
    assert card.get_attribute("aria-busy") == "false"
    assert "catalogued as Star cluster + Nebula, not a galaxy" in card.locator(".caveats").inner_text()
    reach = card.locator("[data-task=morphology] .question .reach").all_inner_texts()
    assert any("after “disk edge on: no”" in text for text in reach), reach


def test_model_card_metrics_show_every_value(page: Any, system: RunningSystem) -> None:
    page.goto(f"{system.url}/#/models/morphology/3")
    page.wait_for_selector("#mc-members")
    table = page.locator("[aria-label='Held-out metrics']")
    text = table.inner_text()
    assert "Vote fraction MAE" in text and "Held-out images" in text
    # Long definitions wrap instead of pushing the numbers out of the visible table.
    box = table.bounding_box()
    for cell in table.locator("td.num").all():
        cell_box = cell.bounding_box()
        assert cell_box["x"] + cell_box["width"] <= box["x"] + box["width"] + 1, cell.inner_text()
