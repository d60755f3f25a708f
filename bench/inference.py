"""Single-image serving speed: raw ONNX Runtime in one process vs. the whole system.

Prints, in one run on this machine, for the tasks named by ``--tasks`` (default
inclination; ``all`` asks every served task in each job, as one upload can):

1. the baseline — the best the same hardware does without the system: the default
   ensembles run in-process through the worker's own path (preprocess + the fused
   ensemble: every member × test-time transform × MC-dropout sample + summary, for
   every task), no queue, no HTTP; once in one process with every core as ONNX
   Runtime threads, once in one process per core (``--workers`` of them, one
   intra-op thread each, as the system's worker processes run); batch 1 and 32.
   The ratios are to the best of these;
2. the system — the same images uploaded one job each through the API (uvicorn),
   Redis and W Celery worker processes, C clients at once, timed end to end;
3. optionally (``--keras``, needs the trainer extra) IncliNET's serving style:
   ``model.predict`` per image per Keras model, for 15 untrained model4 copies.

Usage: ``python bench/inference.py [--images 200] [--workers 2] [--clients 8]
[--tasks inclination|all|a,b] [--keras]``
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.local_stack import free_port, start_redis, start_worker, stop  # noqa: E402
from services.worker.answers import answer, load_models, prepare  # noqa: E402
from services.worker.sessions import SessionCache  # noqa: E402
from services.worker.settings import WorkerSettings  # noqa: E402
from shared.preprocessing import preprocess  # noqa: E402
from shared.registry import RegistryReader  # noqa: E402
from shared.settings import REPO_ROOT  # noqa: E402
from shared.taskdefs import get_task_definition  # noqa: E402

TASK = "inclination"  # the IncliNET comparison (--keras) and the default --tasks


def sample_pngs(n: int) -> list[bytes]:
    """Synthetic galaxies when GalSim is installed, else noisy ellipses."""
    try:
        from services.trainer.data.galaxies import render_galaxy_png

        return [render_galaxy_png(45 + 45 * (i % 10) / 10, seed=i) for i in range(n)]
    except ImportError:
        from tests.helpers.images import png_bytes

        return [png_bytes(128, axis_ratio=0.3 + 0.6 * (i % 10) / 10, seed=i) for i in range(n)]


def _engine(models: Path, tasks: list[str], threads: int, processes: int):  # type: ignore[no-untyped-def]
    """The worker's answer path for ``tasks`` with ONNX Runtime set up as the worker would be."""
    settings = WorkerSettings(models_dir=models, intra_op_threads=threads,
                              worker_processes=processes)
    cache = SessionCache(RegistryReader(models), providers=["CPUExecutionProvider"],
                         intra_op_threads=settings.threads_per_process(),
                         spinning=settings.spinning())
    # What a job loads: the requested tasks plus the evidence passes their applicability
    # rules read (services.worker.answers.load_models), so the baseline does a job's work.
    runtime = SimpleNamespace(sessions=cache, registry=RegistryReader(models))
    loaded = load_models(runtime, tasks, {})  # type: ignore[arg-type]
    definitions = cache.task_definitions

    def answer_all(datas: list[bytes]) -> None:
        # The worker's own path: one decode per input spec, one ensemble run per task.
        images = [prepare(d, loaded, max_pixels=settings.max_image_pixels) for d in datas]
        answer(definitions, loaded, images, max_batch_size=settings.max_batch_size)

    return loaded, answer_all


def _timed(answer_all, pngs: list[bytes], batch: int) -> float:  # type: ignore[no-untyped-def]
    answer_all(pngs[:batch])  # warm up
    start = time.perf_counter()
    for i in range(0, len(pngs), batch):
        answer_all(pngs[i : i + batch])
    return time.perf_counter() - start


def _child(models: Path, tasks: list[str], pngs: list[bytes], batch: int, processes: int,
           barrier, out) -> None:  # type: ignore[no-untyped-def]
    _, answer_all = _engine(models, tasks, 1, processes)
    answer_all(pngs[:batch])  # warm up before the common start
    barrier.wait()
    start = time.time()
    for i in range(0, len(pngs), batch):
        answer_all(pngs[i : i + batch])
    out.put((start, time.time()))


def _processes(pngs: list[bytes], models: Path, tasks: list[str], processes: int,
               batch: int) -> float:
    """Images/s of ``processes`` processes with one ONNX thread each, sharing the images."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    shares = [pngs[i::processes] for i in range(processes)]
    children = [ctx.Process(target=_child, args=(models, tasks, share, batch, processes,
                                                 barrier, out)) for share in shares]
    for child in children:
        child.start()
    spans = [out.get(timeout=600) for _ in children]
    for child in children:
        child.join()
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return len(pngs) / wall


def baseline(pngs: list[bytes], models: Path, tasks: list[str],
             processes: int) -> dict[str, float]:
    """The best the hardware does without the system, several ways; the best one last."""
    out: dict[str, float] = {}
    cores = len(os.sched_getaffinity(0))
    loaded, answer_all = _engine(models, tasks, cores, 1)
    for batch in (1, 32):
        out[f"in-process, 1 process x {cores} threads, batch {batch}"] = (
            len(pngs) / _timed(answer_all, pngs, batch))
    for batch in (1, 32):
        out[f"in-process, {processes} processes x 1 thread, batch {batch}"] = _processes(
            pngs, models, tasks, processes, batch)
    model = loaded[tasks[0]]
    spec = model.manifest.input
    member = model.members[0]
    x = np.stack([preprocess(d, spec) for d in pngs[:32]])
    mc = model.manifest.output.mc_dropout
    # An MC-dropout member takes a mask too; all ones is its deterministic pass.
    masks = {mc.mask_input: np.ones((1, mc.units), np.float32)} if mc else {}
    start = time.perf_counter()
    for row in x:
        member.session.run([member.output_name], {member.input_name: row[None], **masks})
    out[f"model only: one {tasks[0]} member, no TTA, batch 1"] = (
        len(x) / (time.perf_counter() - start))
    return out


def system(pngs: list[bytes], models: Path, workers: int, clients: int,
           tasks: list[str]) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="skyserve-bench-"))
    redis_url, redis_proc = start_redis(tmp / "redis", appendonly=True)
    env = {
        "SKYSERVE_REDIS_URL": redis_url,
        "SKYSERVE_MODELS_DIR": str(models),
        # One ONNX thread per worker process: the processes share the cores.
        "SKYSERVE_INTRA_OP_THREADS": "1",
    }
    worker = start_worker(env, concurrency=workers, log_file=tmp / "worker.log")
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "services.api.app:create_app",
         "--port", str(port), "--log-level", "warning"],
        env={**os.environ, **env}, cwd=REPO_ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            for _ in range(300):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            else:
                raise RuntimeError("the system did not become ready")

            def one(data: bytes) -> float:
                t0 = time.perf_counter()
                job = client.post("/v1/jobs", files={"file": ("g.png", data, "image/png")},
                                  data={"tasks": ",".join(tasks)}).json()
                while job["status"] not in ("succeeded", "failed"):
                    job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 10}).json()
                assert job["status"] == "succeeded", job
                return time.perf_counter() - t0

            one(pngs[0])  # warm up
            start = time.perf_counter()
            with cf.ThreadPoolExecutor(clients) as pool:
                latencies = sorted(pool.map(one, pngs))
            wall = time.perf_counter() - start
    finally:
        for proc in (api, worker, redis_proc):
            stop(proc)
    return {
        f"system, {workers} worker processes, {clients} clients (images/s)": len(pngs) / wall,
        "system latency p50 (ms)": 1000 * statistics.median(latencies),
        "system latency p95 (ms)": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
    }


def keras_baseline(pngs: list[bytes], n_models: int = 15) -> dict[str, float]:
    from services.trainer.model.heads import build_member_models

    task = get_task_definition(TASK)
    keras_models = [build_member_models("model4", task, input_size=128).export
                    for _ in range(n_models)]
    from shared.registry import InputSpec

    spec = InputSpec(size=128)
    start = time.perf_counter()
    for data in pngs:
        x = preprocess(data, spec)[None]
        for m in keras_models:
            m.predict(x, verbose=0)
            m.predict(x[:, ::-1, ::-1], verbose=0)
    return {f"IncliNET style: Keras predict, {n_models} model4 x 2 rotations (images/s)": len(pngs) / (time.perf_counter() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--tasks", default=TASK,
                        help="comma-separated tasks asked in each job, or 'all' (every served task)")
    parser.add_argument("--keras", action="store_true", help="also time IncliNET's Keras serving style")
    args = parser.parse_args()
    reader = RegistryReader(args.models)
    tasks = reader.tasks() if args.tasks == "all" else [t for t in args.tasks.split(",") if t]
    for name in tasks:
        manifest = reader.manifest(name)
        mc = manifest.output.mc_dropout
        print(f"model: {name} v{manifest.version}, {len(manifest.members)} members, "
              f"tta={manifest.tta}, MC samples {mc.samples if mc else 1}, "
              f"input {manifest.input.size}px")
    print(f"{os.cpu_count()} cores; every job asks for: {', '.join(tasks)}")
    pngs = sample_pngs(args.images)
    figures = baseline(pngs, args.models, tasks, args.workers)
    best = max(v for k, v in figures.items() if k.startswith("in-process"))
    figures.update(system(pngs, args.models, args.workers, args.clients, tasks))
    system_rate = next(v for k, v in figures.items() if k.startswith("system,"))
    figures["system / best in-process baseline (ratio)"] = system_rate / best
    if args.keras:
        figures.update(keras_baseline(pngs[:10]))
    width = max(map(len, figures))
    for name, value in figures.items():
        unit = "" if "(" in name else " images/s"
        print(f"  {name:<{width}}  {value:10.{3 if 'ratio' in name else 1}f}{unit}")


if __name__ == "__main__":
    main()
