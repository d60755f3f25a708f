"""Does an inclination know when it does not apply? Flag rates on held-out images.

Every image goes through the worker's own path (``services.worker.answers``:
``prepare`` + ``answer`` with the inclination model and, as evidence, the object-type,
rejection and morphology defaults), so the ``applicable`` flag measured here is the
one a job returns. Two kinds of images:

1. **synthetic, held out** — rendered by the trainer's generators from seeds no
   recipe trains on: good inclined disks (45–90°, none of the rejection reasons),
   face-on disks (< 45°), ellipticals (morphology's smooth scenes) and empty fields
   (sky noise and a few stars);
2. **real** — the labelled CSV's ``val`` photos (``../shared/data``), in colour and
   grey as the object-type evaluation uses them: non-galaxies by their label,
   ellipticals by their Hubble type, spirals with an OpenNGC axis ratio split into
   good disks (axis-ratio inclination ≥ 45°) and face-on (< 45°). ``--split train``
   measures the training photos instead (optimistic: object type saw them).

Prints per category how often the answer is flagged and by which rules, then the two
figures that matter: non-disks flagged (want 1) and good disks wrongly flagged (want 0).
The baseline in the same run is no applicability at all: it flags nothing. Also the
cost: images per second with inclination alone vs. with its evidence tasks.

Usage: ``python bench/applicability.py [--n 200] [--split val] [--seed N] [--models-dir models]``
(needs the trainer extra for GalSim and Debian's stellarium-data for the photos).
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.worker.answers import ModelSet, answer, evidence_model, prepare  # noqa: E402
from services.worker.sessions import SessionCache  # noqa: E402
from shared.registry import RegistryReader  # noqa: E402
from shared.settings import REPO_ROOT  # noqa: E402
from shared.taskdefs import load_task_definitions  # noqa: E402

TASK = "inclination"
#: Far from every recipe's split seeds (0, 1_000_003, 2_000_006 + index mixing).
BENCH_SEED = 7_000_011
Q0 = 0.2


def synthetic(n: int, base: int = BENCH_SEED) -> dict[str, list[bytes]]:
    """``n`` held-out PNGs per synthetic category (seeds from ``base``)."""
    from dataclasses import replace

    from services.trainer.data import scenes
    from services.trainer.data.labelled import example_seed
    from services.trainer.data.morphology import render_morphology
    from services.trainer.data.rejection import render_rejection
    from services.trainer.data.render import encode_png, sample_params

    def seed(category: int, i: int) -> int:
        return example_seed(base + category, i)

    def empty(s: int) -> bytes:
        rng = np.random.default_rng([s, 5])
        p = replace(sample_params(s), star=False)
        planes = np.zeros((p.height, p.width, 3))
        field, _ = scenes.field_stars(p, rng, chance=0.7)
        planes = planes + field
        # The noise a good galaxy scene would have, with nothing in the middle.
        return encode_png(scenes.observe(planes, p, sigma=float(rng.uniform(0.002, 0.02))))

    return {
        "good disk (45-90 deg)": [encode_png(render_rejection(seed(0, i), reasons=set()).image)
                                  for i in range(n)],
        "face-on disk (< 45 deg)": [encode_png(render_rejection(
            seed(1, i), reasons={"face_on"}).image) for i in range(n)],
        "elliptical": [encode_png(render_morphology(seed(2, i), kind="elliptical").image)
                       for i in range(n)],
        "empty field": [empty(seed(3, i)) for i in range(n)],
    }


def _grey_png(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB").convert("L")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def axis_ratio_inclination(major: float, minor: float) -> float:
    """``cos² i = (q² − q0²)/(1 − q0²)``, q0 = 0.2, in degrees."""
    q = minor / major
    cos2 = max(0.0, (q * q - Q0 * Q0) / (1.0 - Q0 * Q0))
    return math.degrees(math.acos(min(1.0, math.sqrt(cos2))))


def real(split: str) -> tuple[dict[str, list[bytes]], dict[str, list[str]]]:
    """The labelled CSV's ``split`` photos by category (colour and grey), with their names."""
    import csv

    from services.trainer.data.photos import catalog_paths

    csv_path, folder = catalog_paths()
    images: dict[str, list[bytes]] = defaultdict(list)
    names: dict[str, list[str]] = defaultdict(list)
    with csv_path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["split"] != split:
                continue
            hubble = (row.get("hubble") or "").strip()
            if row["label"] != "galaxy":
                category = f"not a galaxy: {row['label'].replace('_', ' ')}"
            elif hubble.startswith("E"):
                category = "elliptical"
            elif hubble.startswith("S") and not hubble.startswith("S0") \
                    and row.get("majax_arcmin") and row.get("minax_arcmin"):
                incl = axis_ratio_inclination(float(row["majax_arcmin"]),
                                              float(row["minax_arcmin"]))
                category = "good disk (45-90 deg)" if incl >= 45.0 else "face-on disk (< 45 deg)"
            else:
                category = "other galaxy (S0, irregular, no axis ratio): not scored"
            data = (folder / row["file"]).read_bytes()
            images[category] += [data, _grey_png(data)]
            names[category] += [f"{row['object']} ({row['file']})"] * 2
    return dict(images), dict(names)


def measure(pngs: list[bytes], models: ModelSet, definitions: dict, max_pixels: int) -> list:
    """The inclination answer of every PNG, through the worker's path."""
    prepared = [prepare(data, models, max_pixels=max_pixels) for data in pngs]
    out = []
    for i in range(0, len(prepared), 64):
        out += [a[TASK] for a in answer(definitions, models, prepared[i:i + 64],
                                        max_batch_size=64)]
    return out


def report(title: str, groups: dict[str, list[bytes]], models: ModelSet,
           definitions: dict) -> dict[str, tuple[int, int]]:
    """Print the flag rate per category; return category → (flagged, n)."""
    print(f"\n{title}")
    print(f"  {'category':<58} {'n':>5} {'flagged':>8}  rules that fired")
    totals = {}
    for category, pngs in groups.items():
        results = measure(pngs, models, definitions, 50_000_000)
        flagged = [r for r in results if r.applicable is False]
        rules = Counter(reason.split(" says")[0] for r in flagged
                        for reason in (r.applicable_reason or "").split(". ") if " says" in reason)
        totals[category] = (len(flagged), len(results))
        print(f"  {category:<58} {len(results):>5} {len(flagged) / len(results):>8.2f}  "
              + ", ".join(f"{k} {v}" for k, v in rules.most_common()))
    return totals


def summary(name: str, totals: dict[str, tuple[int, int]]) -> None:
    good = [v for k, v in totals.items() if k.startswith("good disk")]
    bad = [v for k, v in totals.items() if not k.startswith(("good disk", "other galaxy"))]
    g_flag, g_n = map(sum, zip(*good, strict=True)) if good else (0, 0)
    b_flag, b_n = map(sum, zip(*bad, strict=True)) if bad else (0, 0)
    print(f"  {name}: non-disks flagged {b_flag / max(b_n, 1):.3f} ({b_flag}/{b_n}); "
          f"good disks wrongly flagged {g_flag / max(g_n, 1):.3f} ({g_flag}/{g_n}) — "
          "baseline without applicability: 0.000 and 0.000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="Synthetic images per category.")
    parser.add_argument("--split", default="val", choices=["val", "train"])
    parser.add_argument("--seed", type=int, default=BENCH_SEED,
                        help="First synthetic seed; choose thresholds with another seed "
                             "and --split train, then measure with the defaults.")
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    args = parser.parse_args()

    definitions = load_task_definitions()
    cache = SessionCache(RegistryReader(args.models_dir), providers=["CPUExecutionProvider"],
                         intra_op_threads=1)
    evidence = {name: evidence_model(cache.get(name))
                for name in definitions[TASK].evidence_tasks}
    models = ModelSet({TASK: cache.get(TASK)}, evidence=evidence)
    print(f"{TASK} v{models[TASK].version}; evidence: "
          + ", ".join(f"{k} v{m.version}" for k, m in evidence.items()))
    for rule in definitions[TASK].applicability:
        test = f"{rule.output}" if rule.output else f"top class not in {rule.top_not_in}"
        print(f"  rule: {rule.task} {test} >= {rule.at_least}")

    started = time.perf_counter()
    groups = synthetic(args.n, args.seed)
    print(f"rendered {sum(map(len, groups.values()))} synthetic scenes in "
          f"{time.perf_counter() - started:.0f} s")
    syn = report("held-out synthetic scenes", groups, models, definitions)
    photos, _ = real(args.split)
    photo_totals = report(f"real photos, CSV split {args.split!r} (colour + grey)", photos,
                          models, definitions)
    print("\nsummary")
    summary("synthetic", syn)
    summary(f"real ({args.split})", photo_totals)

    sample = groups["good disk (45-90 deg)"][:32]
    alone = ModelSet({TASK: models[TASK]})
    choices = {"inclination alone": alone, "with its evidence (cheap pass)": models}
    rates: dict[str, list[float]] = defaultdict(list)
    for chosen in choices.values():
        measure(sample[:4], chosen, definitions, 50_000_000)  # warm up
    for _ in range(3):  # alternate, so that a busy moment hits both alike
        for label, chosen in choices.items():
            start = time.perf_counter()
            for data in sample:
                measure([data], chosen, definitions, 50_000_000)
            rates[label].append(len(sample) / (time.perf_counter() - start))
    for label, got in rates.items():
        print(f"  cost, one image per call, one thread per session: {label}: "
              f"{np.median(got):.1f} images/s (median of {len(got)} rounds)")
    print("(a shared, busy machine: compare the two rates of this run, not across runs)")


if __name__ == "__main__":
    main()
