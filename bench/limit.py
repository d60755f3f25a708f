"""The limit: the CPU's measured peak and how close each default ensemble gets to it.

Prints, in one run on this machine:

1. the peak — GFLOP/s of a large dense convolution stack (built here with
   ``onnx.helper``, FLOPs counted analytically) in ONNX Runtime with every core;
2. for every default ensemble under ``models/``, raw ONNX Runtime images/s through
   :func:`shared.members.run_members` at the worker's batch sizes (1, 8, 32, 128
   images per call, ``max_batch_size`` rows per session run as the worker's
   setting) — the old path (a session per member, copies made in numpy) next to
   the new one (the members fused into one graph, :mod:`shared.fused`) — with the
   achieved GFLOP/s and its share of the peak.

FLOPs per image are counted from the graphs (Conv, MatMul, Gemm: a multiply-add
counts 2, shapes measured by running the graph once). *Nominal*: the member graphs ×
transforms × MC samples, the work the old path does. The fused graph does less of
it (shared work runs once, MC samples only after the mask), so two figures for the
new path: the nominal work per second (what the same answers would cost done the
old way; it can pass the peak) and the *executed* GFLOP/s, counted from the fused
graph itself — the one to hold against the peak. The peak is measured before and
after the ensembles; the higher one counts.

Usage: ``python bench/limit.py [--threads 2] [--seconds 2] [--batches 1,8,32,128]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.worker.sessions import SessionCache  # noqa: E402
from services.worker.settings import WorkerSettings  # noqa: E402
from shared.fused import fuse  # noqa: E402
from shared.members import probe_images, run_members  # noqa: E402
from shared.registry import RegistryReader  # noqa: E402
from shared.settings import REPO_ROOT  # noqa: E402

COUNTED = ("Conv", "MatMul", "Gemm")


def options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def graph_flops(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    """FLOPs of one run of ``model`` on ``feeds``: Conv, MatMul and Gemm, shapes measured.

    Every counted node's inputs and output become graph outputs, the graph runs once
    (no optimisation, so nothing is fused away) and the shapes give the count.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    counted = [n for n in graph.node if n.op_type in COUNTED]
    wanted = {name for n in counted for name in [*n.input[:2], n.output[0]]} - set(inits)
    existing = {o.name for o in graph.output} | {i.name for i in graph.input}
    for name in sorted(wanted - existing):
        graph.output.append(helper.make_empty_tensor_value_info(name))
    opts = options(1)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    shapes = {n: v.shape for n, v in zip(names, session.run(names, feeds), strict=True)}
    shapes.update({k: v.shape for k, v in feeds.items()})
    shapes.update({k: v.shape for k, v in inits.items()})
    total = 0.0
    for node in counted:
        out = shapes[node.output[0]]
        if node.op_type == "Conv":
            weight = shapes[node.input[1]]  # (M, C/group, kh, kw)
            total += 2.0 * np.prod(out) * np.prod(weight[1:])
        else:
            a = shapes[node.input[0]]
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            inner = a[-2] if (node.op_type == "Gemm" and trans_a) else a[-1]
            total += 2.0 * np.prod(out) * inner
    return total


def peak(threads: int, seconds: float) -> tuple[float, str]:
    """GFLOP/s of a large dense conv stack: 8 × (3×3, 128→128 channels) on 64×64, batch 8."""
    channels, size, depth, batch = 128, 64, 8, 8
    rng = np.random.default_rng(0)
    nodes, inits, name = [], [], "x"
    for i in range(depth):
        w = numpy_helper.from_array(
            (rng.standard_normal((channels, channels, 3, 3)) * 0.03).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [name, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        name = f"r{i}"
    graph = helper.make_graph(
        nodes, "peak",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    flops = depth * 2.0 * batch * channels * size * size * channels * 9  # analytic
    session = ort.InferenceSession(model.SerializeToString(), options(threads),
                                   providers=["CPUExecutionProvider"])
    x = rng.random((batch, channels, size, size), dtype=np.float32)
    session.run(None, {"x": x})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 3:
        session.run(None, {"x": x})
        runs += 1
    rate = flops * runs / (time.perf_counter() - start) / 1e9
    return rate, f"{depth} conv 3x3 {channels}->{channels} ch at {size}x{size}, batch {batch}"


def nominal_flops(model, folder: Path) -> float:  # type: ignore[no-untyped-def]
    """FLOPs per image the old way: every member × transform × MC sample."""
    manifest = model.manifest
    mc = manifest.output.mc_dropout
    passes = len(manifest.tta or ["identity"]) * (mc.samples if mc else 1)
    x = probe_images(manifest.input, 1)
    total = 0.0
    for member in manifest.members:
        feeds = {manifest.input.input_name: x}
        if mc:
            feeds[mc.mask_input] = np.ones((1, mc.units), np.float32)
        total += graph_flops(onnx.load(folder / member.file), feeds)
    return total * passes


def executed_flops(model, folder: Path) -> float:  # type: ignore[no-untyped-def]
    """FLOPs per image the fused graph really does (counted on a batch of 8)."""
    manifest = model.manifest
    mc = manifest.output.mc_dropout
    graph = fuse([onnx.load(folder / m.file) for m in manifest.members],
                 input_name=manifest.input.input_name, output_name=manifest.output.output_name,
                 mask_input=mc.mask_input if mc else None,
                 transforms=manifest.tta or ["identity"], samples=mc.samples if mc else 1)
    n = 8
    feeds = {model.fused.input_name: probe_images(manifest.input, n)}
    rows = n * len(manifest.tta or [1]) * (mc.samples if mc else 1)
    for name in model.fused.mask_inputs:
        feeds[name] = np.ones((rows, mc.units), np.float32)  # type: ignore[union-attr]
    return graph_flops(graph, feeds) / n


def rate(manifest, ensemble, x: np.ndarray, batch: int, max_rows: int,  # type: ignore[no-untyped-def]
         seconds: float) -> float:
    """Images/s of run_members over ``x`` in calls of ``batch`` images."""
    run_members(manifest, ensemble, x[:batch], max_batch_size=max_rows)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < batch:
        for i in range(0, len(x), batch):
            run_members(manifest, ensemble, x[i : i + batch], max_batch_size=max_rows)
            done += len(x[i : i + batch])
            if time.perf_counter() - start > seconds and done >= batch:
                break
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--batches", default="1,8,32,128")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--tasks", default="", help="comma-separated; default every served task")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    reader = RegistryReader(args.models)
    tasks = [t for t in args.tasks.split(",") if t] or reader.tasks()
    settings = WorkerSettings(models_dir=args.models, intra_op_threads=args.threads)
    print(f"ONNX Runtime {ort.__version__}, {args.threads} intra-op threads, "
          f"{os.cpu_count()} cores; worker max_batch_size {settings.max_batch_size} rows; "
          f"load average {os.getloadavg()[0]:.1f} (other work on the machine skews every figure)")
    top, what = peak(args.threads, args.seconds)
    print(f"peak: {top:.1f} GFLOP/s ({what})")
    cache = SessionCache(reader, providers=["CPUExecutionProvider"],
                         intra_op_threads=args.threads, spinning=True)
    rows = []
    for task in tasks:
        model = cache.get(task)
        manifest = model.manifest
        folder = reader.version_dir(task, manifest.version)
        nominal = nominal_flops(model, folder)
        executed = executed_flops(model, folder) if model.fused is not None else nominal
        mc = manifest.output.mc_dropout
        print(f"{task}: {len(manifest.members)} members x {len(manifest.tta or [1])} transforms x "
              f"{mc.samples if mc else 1} MC samples: {nominal / 1e6:.1f} MFLOP/image nominal, "
              f"{executed / 1e6:.1f} executed by the fused graph "
              f"(fused: {'yes' if model.fused is not None else 'NO'})")
        x = np.repeat(probe_images(manifest.input, 8), 16, axis=0)
        for batch in batches:
            old = rate(manifest, model.runners(), x, batch, settings.max_batch_size, args.seconds)
            new = rate(manifest, model.ensemble(), x, batch, settings.max_batch_size, args.seconds)
            rows.append((task, batch, old, new, nominal, executed))
    again, _ = peak(args.threads, args.seconds)
    print(f"peak again: {again:.1f} GFLOP/s; using {max(top, again):.1f}")
    top = max(top, again)
    print(f"{'task':<12} {'batch':>5} {'old img/s':>9} {'new img/s':>9} {'speed-up':>8} "
          f"{'old GFLOP/s':>11} {'old %peak':>9} {'new nominal':>11} {'new executed':>12} "
          f"{'new %peak':>9}")
    for task, batch, old, new, nominal, executed in rows:
        og, nn, ne = old * nominal / 1e9, new * nominal / 1e9, new * executed / 1e9
        print(f"{task:<12} {batch:>5} {old:>9.0f} {new:>9.0f} {new / old:>7.1f}x "
              f"{og:>11.1f} {100 * og / top:>8.1f}% {nn:>11.1f} {ne:>12.1f} "
              f"{100 * ne / top:>8.1f}%")


if __name__ == "__main__":
    main()
