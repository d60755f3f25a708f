"""The peer: IncliNET-style serving against skyserve's engine, on the same images, in one run.

IncliNET answered each request synchronously: decode, resize to 128 px, then every
one of its 15 Keras models' ``predict`` on the image and on its 180° rotation, one
model after another, and the median (mission: ≈ 1.5 s per image on 2 cores). This
bench rebuilds that peer with TensorFlow — 15 models of IncliNET's architecture
(``--arch``, default model4; untrained weights: the cost does not depend on them)
— and times its request handler in-process (no Flask, no HTTP: the peer is spared
its web stack). On the same PNGs it times skyserve's in-process engine, the
worker's own path (:func:`services.worker.answers.prepare` + ``answer``, decode
included), one image per call and 32 per call:

1. skyserve's default inclination ensemble (``models/``);
2. the same 15 IncliNET models, exported through tf2onnx, published into a
   temporary registry (identity + rot180, as IncliNET served) and served by
   skyserve (fused into one graph like every version).

The ratios are skyserve images/s over the peer's. The peer is slow, so it sees the
first ``--peer-images`` of the images only (its rate hardly varies per image).

Usage: ``python bench/peer.py [--images 200] [--peer-images 12] [--arch model4]``
(needs the trainer extra: TensorFlow, tf2onnx)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from services.worker.answers import answer, prepare  # noqa: E402
from services.worker.sessions import SessionCache  # noqa: E402
from services.worker.settings import WorkerSettings  # noqa: E402
from shared.preprocessing import preprocess  # noqa: E402
from shared.registry import (  # noqa: E402
    InputSpec,
    Manifest,
    Member,
    OutputSpec,
    RegistryReader,
    RegistryWriter,
    sha256_file,
)
from shared.settings import REPO_ROOT  # noqa: E402
from shared.taskdefs import get_task_definition  # noqa: E402

TASK = "inclination"
SIZE = 128  # IncliNET's input


def sample_pngs(n: int) -> list[bytes]:
    """Synthetic galaxies (GalSim, 128 px) at inclinations across 45-90 degrees."""
    from services.trainer.data.galaxies import render_galaxy_png

    return [render_galaxy_png(45 + 45 * (i % 10) / 10, seed=i) for i in range(n)]


def peer_models(count: int, arch: str) -> list:  # type: ignore[type-arg]
    """``count`` Keras models of IncliNET's architecture with the regression head."""
    from services.trainer.model.heads import build_member_models

    task = get_task_definition(TASK)
    return [build_member_models(arch, task, input_size=SIZE).export for _ in range(count)]


def peer(pngs: list[bytes], models: list) -> float:  # type: ignore[type-arg]
    """Images/s of IncliNET's request handler: every model's predict, image and rot180."""
    spec = InputSpec(size=SIZE)

    def handle(data: bytes) -> float:
        x = preprocess(data, spec)[None]
        turned = np.ascontiguousarray(x[:, ::-1, ::-1])
        values = []
        for model in models:
            for image in (x, turned):
                p = float(model.predict(image, verbose=0)[0, 0])
                values.append(45.0 + 45.0 * (p + 1.0) / 2.0)
        return float(np.median(values))

    handle(pngs[0])  # warm up (graph tracing), as a long-running server would be
    start = time.perf_counter()
    for data in pngs:
        handle(data)
    return len(pngs) / (time.perf_counter() - start)


def publish_peer(models: list, root: Path, arch: str) -> None:  # type: ignore[type-arg]
    """Export the peer's Keras models with tf2onnx and publish them as one version."""
    from services.trainer.export import export_onnx

    writer = RegistryWriter(root)
    staging = writer.stage(TASK)
    members = []
    for i, model in enumerate(models):
        path = export_onnx(model, staging / f"{arch}-{i}.onnx")
        members.append(Member(name=f"{arch}-{i}", file=path.name, architecture=arch,
                              sha256=sha256_file(path)))
    manifest = Manifest(task=TASK, version=1, members=members,
                        input=InputSpec(size=SIZE, channels=3, scaling="unit"),
                        output=OutputSpec(activation="tanh_range"),
                        tta=["identity", "rot180"],
                        training={"note": "bench/peer.py: IncliNET-style untrained models"})
    writer.publish(staging, manifest)


def engine(pngs: list[bytes], models_dir: Path, batch: int) -> float:
    """Images/s of skyserve's worker path in-process: decode + fused ensemble + summary."""
    settings = WorkerSettings(models_dir=models_dir)
    cache = SessionCache(RegistryReader(models_dir), providers=["CPUExecutionProvider"],
                         intra_op_threads=settings.threads_per_process(),
                         spinning=settings.spinning())
    models = {TASK: cache.get(TASK)}
    assert models[TASK].fused is not None, "not fused"
    definitions = {TASK: get_task_definition(TASK)}

    def run(datas: list[bytes]) -> None:
        images = [prepare(d, models, max_pixels=settings.max_image_pixels) for d in datas]
        answer(definitions, models, images, max_batch_size=settings.max_batch_size)

    run(pngs[:batch])
    start = time.perf_counter()
    for i in range(0, len(pngs), batch):
        run(pngs[i : i + batch])
    return len(pngs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--peer-images", type=int, default=12)
    parser.add_argument("--models", type=int, default=15, help="the peer's Keras models")
    parser.add_argument("--arch", default="model4", help="IncliNET architecture of every model")
    args = parser.parse_args()
    import tensorflow as tf

    threads = len(os.sched_getaffinity(0))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    print(f"{threads} cores; {args.images} images (peer: the first {args.peer_images}); "
          f"peer: {args.models} x {args.arch} at {SIZE} px, Keras predict x 2 rotations per model")
    pngs = sample_pngs(args.images)
    keras_models = peer_models(args.models, args.arch)
    figures: dict[str, float] = {}
    figures["peer: IncliNET-style, Keras predict per model per request"] = peer(
        pngs[: args.peer_images], keras_models)
    for batch in (1, 32):
        figures[f"skyserve default inclination ensemble, {batch} per call"] = engine(
            pngs, REPO_ROOT / "models", batch)
    with tempfile.TemporaryDirectory(prefix="skyserve-peer-") as tmp:
        publish_peer(keras_models, Path(tmp), args.arch)
        for batch in (1, 32):
            figures[f"skyserve serving the peer's {args.models} {args.arch} (tf2onnx), "
                    f"{batch} per call"] = engine(pngs, Path(tmp), batch)
    base = next(iter(figures.values()))
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"  {name:<{width}}  {value:9.2f} images/s  {value / base:8.1f}x the peer")


if __name__ == "__main__":
    main()
