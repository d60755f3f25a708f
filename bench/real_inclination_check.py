"""The real check of the inclination model: real spiral photos vs. their catalogued axis ratio.

The labelled CSV (``../shared/data/stellarium_dso_trainval.csv``; its ``train`` and
``val`` photos are the ones we may use) lists the Stellarium photos of galaxies with
OpenNGC's Hubble type and major/minor axes. For every spiral (Hubble type ``S…``,
lenticulars ``S0`` left out) with both axes, the photo is answered through the
worker's own path (``services.worker.answers``: ``prepare`` + ``answer``, the
default inclination model with its applicability evidence) and compared with the
classical axis-ratio inclination ``cos² i = (q² − q0²)/(1 − q0²)``, q0 = 0.2.

The reference is itself noisy (catalogue axes of a bright disk, a few degrees for
clean disks, more for barred or warped ones), and the model serves 45–90°: the
headline is over the spirals whose reference is in that range; the others (face-on
by their axes) are listed with what the model says about them (``applicable``).
Prints RMS, MAE, mean error and N, then the worst 10 cases by name.

Usage: ``python bench/real_inclination_check.py [--models-dir models] [--worst 10]``
(needs Debian's stellarium-data for the photos).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.worker.answers import ModelSet, answer, evidence_model, prepare  # noqa: E402
from services.worker.sessions import SessionCache  # noqa: E402
from shared.registry import RegistryReader  # noqa: E402
from shared.settings import REPO_ROOT  # noqa: E402
from shared.taskdefs import load_task_definitions  # noqa: E402

TASK = "inclination"
Q0 = 0.2


def axis_ratio_inclination(q: float, q0: float = Q0) -> float:
    """``cos² i = (q² − q0²)/(1 − q0²)`` in degrees (90 below q0)."""
    cos2 = max(0.0, (q * q - q0 * q0) / (1.0 - q0 * q0))
    return math.degrees(math.acos(min(1.0, math.sqrt(cos2))))


def spirals() -> list[dict[str, str]]:
    """The CSV's train + val spiral galaxies with both catalogued axes."""
    from services.trainer.data.photos import catalog_paths

    csv_path, _ = catalog_paths()
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [r for r in rows
            if r["split"] in ("train", "val") and r["label"] == "galaxy"
            and r["hubble"].startswith("S") and not r["hubble"].startswith("S0")
            and r["majax_arcmin"] and r["minax_arcmin"] and float(r["majax_arcmin"]) > 0]


def stats(err: np.ndarray) -> str:
    return (f"RMS {np.sqrt(np.mean(err ** 2)):.2f} deg, MAE {np.mean(np.abs(err)):.2f} deg, "
            f"mean {np.mean(err):+.2f} deg, N {len(err)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--worst", type=int, default=10)
    args = parser.parse_args()

    from services.trainer.data.photos import catalog_paths

    _, folder = catalog_paths()
    definitions = load_task_definitions()
    cache = SessionCache(RegistryReader(args.models_dir), providers=["CPUExecutionProvider"],
                         intra_op_threads=0)
    models = ModelSet({TASK: cache.get(TASK)},
                      evidence={n: evidence_model(cache.get(n))
                                for n in definitions[TASK].evidence_tasks})
    rows = spirals()
    prepared = [prepare((folder / r["file"]).read_bytes(), models, max_pixels=50_000_000)
                for r in rows]
    answers = [a[TASK] for a in answer(definitions, models, prepared, max_batch_size=64)]
    reference = np.array([axis_ratio_inclination(float(r["minax_arcmin"])
                                                 / float(r["majax_arcmin"])) for r in rows])
    served = np.array([float(a.value) for a in answers])  # type: ignore[arg-type]
    sigma = np.array([(a.summary or {}).get("error", np.nan) for a in answers])
    applicable = np.array([a.applicable is not False for a in answers])
    lo, hi = definitions[TASK].range  # type: ignore[misc]

    print(f"{TASK} v{models[TASK].version}: {len(rows)} spiral photos (train + val) of the "
          f"labelled CSV with OpenNGC axes; reference cos^2 i = (q^2 - q0^2)/(1 - q0^2), "
          f"q0 = {Q0}")
    inside = reference >= lo
    err = served - reference
    print(f"  reference in the served range ({lo:g}-{hi:g} deg): {stats(err[inside])}")
    print(f"    of them answered as applicable: {stats(err[inside & applicable])}")
    if np.isfinite(sigma).all():
        within = np.abs(err[inside]) <= sigma[inside]
        print(f"    truth within the answer's stated 1-sigma: {within.mean():.2f} "
              f"(median sigma {np.median(sigma[inside]):.2f} deg; the reference's own "
              "scatter is not in it)")
    clipped = np.clip(reference, lo, hi)
    print(f"  every spiral, reference clipped to {lo:g}-{hi:g}: {stats(served - clipped)}")
    face_on = ~inside
    print(f"  face-on by their axes (< {lo:g} deg): {face_on.sum()}, of them flagged not "
          f"applicable: {int((~applicable[face_on]).sum())}")
    print(f"\nworst {args.worst} (reference in the served range):")
    print(f"  {'object':<10} {'file':<28} {'hubble':<8} {'q':>5} {'ref':>6} {'served':>7} "
          f"{'err':>6}  applicable")
    order = [i for i in np.argsort(-np.abs(err)) if inside[i]][: args.worst]
    for i in order:
        r, a = rows[i], answers[i]
        q = float(r["minax_arcmin"]) / float(r["majax_arcmin"])
        flag = "yes" if a.applicable is not False else f"no: {a.applicable_reason}"
        print(f"  {r['object']:<10} {r['file']:<28} {r['hubble']:<8} {q:>5.2f} "
              f"{reference[i]:>6.1f} {served[i]:>7.1f} {err[i]:>+6.1f}  {flag}")


if __name__ == "__main__":
    main()
