"""One ONNX graph for a whole ensemble: its members side by side, shared work done once.

:func:`fuse` turns a version's member graphs into one graph that a single session
call runs for a whole batch (see :class:`shared.members.FusedMembers`):

- every member reads the same input (the images under every test-time transform,
  ``T·N`` rows, as :func:`shared.members.run_members` stacks them) and the outputs
  come back stacked, ``(members, rows, K)``;
- with MC dropout, each member's body runs once per transformed image and only what
  follows the mask runs ``samples`` times (the rows before the mask are repeated
  inside the graph), instead of the whole member once per sample;
- a transform-invariant branch (the isophote moments of the ``compact`` and ``lean``
  bodies: second moments about the centroid, on a window and a grid that every
  quarter turn and flip maps onto itself) runs on the first transform's rows only
  and is repeated for the others;
- the moment branch's one matrix product over its concatenated weight maps is
  done map by map (the same sums without copying every map into one large
  tensor first: that copy was a fifth of the fused graph's time);
- identical weights and identical operations on identical inputs are merged (the
  moment branch has no weights and is the same in every member), so work the
  members share runs once.

In the ``compact`` inclination default the moment branch is ~90 % of a member's
time in ONNX Runtime; it now runs once per image rather than once per member and
transform. None of this changes what is computed, only how often: a fused graph's
answers equal the members' own within float rounding. The rewrites that rest on an
assumption (an operation commutes with the transforms, a branch is invariant) are
recorded in the graph's metadata, and :func:`fuse_version` then runs the fused
graph against the members on galaxy-like images when a version is loaded (it serves
the members one by one when they differ by more than :data:`TOLERANCE`). Members
with control flow (Loop, If, Scan) are not fused.

Only the worker and the trainer import this module (it needs the ``onnx`` package);
it never imports ONNX Runtime.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shared.members import FusedMembers, MemberRunner, Session, agreement, probe_images
from shared.registry import Manifest

__all__ = ["ASSUMED", "FUSED_OUTPUT", "TOLERANCE", "fuse", "fuse_version", "mask_input_name"]

logger = logging.getLogger(__name__)

#: Most a fused graph's raw outputs may differ from its members' (``|a-b| / (1+|b|)``).
TOLERANCE = 1e-4

#: The fused graph's one output: ``(members, rows, K)``.
FUSED_OUTPUT = "members"
#: Metadata key listing the rewrites a fused graph rests on that are not exact by
#: construction (commuting with the transforms, invariant branches).
ASSUMED = "skyserve.assumed"

# Node names tf2onnx gives the SkyNormalise and IsophoteMoments layers
# ("<model>/sky_normalise_1/...", "<model>/moments_1/...").
_SKY_NORMALISE = re.compile(r"(^|/)sky_normalise(_\d+)?/")
_INVARIANT_BRANCH = re.compile(r"(^|/)moments(_\d+)?/")


def mask_input_name(member: int, mask_input: str) -> str:
    """The fused graph's MC-dropout mask input for member number ``member``."""
    return f"m{member}/{mask_input}"


def fuse(
    members: Sequence[onnx.ModelProto],
    *,
    input_name: str,
    output_name: str | None = None,
    mask_input: str | None = None,
    transforms: Sequence[str] = ("identity",),
    samples: int = 1,
) -> onnx.ModelProto:
    """One graph answering for every member of ``members``.

    Parameters
    ----------
    members
        The member graphs, in manifest order (each takes ``input_name``, and
        ``mask_input`` when the version has MC dropout).
    input_name
        The image input, ``(n, H, W, C)``: the images as they are. The fused graph
        makes the transformed copies itself.
    output_name
        Each member's output (None: its first).
    mask_input
        The MC-dropout mask input, None without MC dropout. The fused graph takes one
        per member, named :func:`mask_input_name`, of ``S·T·n`` rows.
    transforms
        The manifest's test-time transforms (:data:`shared.preprocessing.TTA_TRANSFORMS`),
        ``T`` of them; output rows are ordered transform, then image.
    samples
        MC-dropout samples ``S``: rows after the mask are ordered sample, transform,
        image, ``S·T·n`` of them.

    Returns
    -------
    onnx.ModelProto
        Inputs ``input_name`` (+ masks); output :data:`FUSED_OUTPUT`.
    """
    if not members:
        raise ValueError("An ensemble needs at least one member.")
    nodes: list[onnx.NodeProto] = []
    initializers: list[TensorProto] = []
    inputs: list[onnx.ValueInfoProto] = []
    outputs: list[str] = []
    opsets: dict[str, int] = {}
    assumed: set[str] = set()
    for index, model in enumerate(members):
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for node in model.graph.node for a in node.attribute):
            # Subgraphs (Loop, If, Scan) read outer names this renaming would break.
            raise ValueError(f"member {index} has control flow; it is not fused")
        graph = onnx.GraphProto()
        graph.CopyFrom(model.graph)
        out = output_name or graph.output[0].name
        if _split_product(graph):
            assumed.add("moment product by parts")
        assumed.update(_transform_inside(graph, input_name, list(transforms)))
        if mask_input is not None and samples > 1:
            _repeat_before(graph, mask_input, samples)
        keep = {input_name}
        rename = _prefixer(f"m{index}/", keep)
        for node in graph.node:
            node.name = rename(node.name) if node.name else ""
            node.input[:] = [rename(name) if name else "" for name in node.input]
            node.output[:] = [rename(name) for name in node.output]
            nodes.append(node)
        for init in graph.initializer:
            init.name = rename(init.name)
            initializers.append(init)
        for value in graph.input:
            if value.name == input_name:
                if not inputs:
                    inputs.append(value)
            elif value.name == mask_input:
                value.name = mask_input_name(index, value.name)
                inputs.append(value)
            elif value.name not in {i.name for i in model.graph.initializer}:
                raise ValueError(f"member {index} has an unexpected input {value.name!r}")
        outputs.append(rename(out))
        for opset in model.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
    if not inputs or inputs[0].name != input_name:
        raise ValueError(f"the members have no input {input_name!r}")

    axes = _constant("fused/axes0", np.array([0], dtype=np.int64), nodes)
    stacked = []
    for index, out in enumerate(outputs):
        name = f"fused/member{index}"
        nodes.append(helper.make_node("Unsqueeze", [out, axes], [name], name=name))
        stacked.append(name)
    nodes.append(helper.make_node("Concat", stacked, [FUSED_OUTPUT], axis=0, name="fused/stack"))
    output = helper.make_tensor_value_info(FUSED_OUTPUT, TensorProto.FLOAT, ["members", "rows", "outputs"])
    graph = helper.make_graph(nodes, "fused_ensemble", inputs, [output], initializers)
    graph = _deduplicate(graph)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets.items()],
        producer_name="skyserve.fused",
    )
    model.ir_version = max(m.ir_version for m in members)
    # What this graph assumes beyond exact rewrites (renaming, stacking, pixel
    # permutations, repeated rows, merged duplicates): fuse_version checks those.
    helper.set_model_props(model, {ASSUMED: ", ".join(sorted(assumed))})
    onnx.checker.check_model(model)
    return model


def fuse_version(
    manifest: Manifest,
    members: Sequence[onnx.ModelProto],
    make_session: Callable[[bytes], Session],
    plain: Sequence[MemberRunner],
    *,
    tolerance: float = TOLERANCE,
) -> FusedMembers | None:
    """A version's members fused into one session, checked against the members themselves.

    ``make_session`` turns a serialised graph into a session (the caller's ONNX
    Runtime and options); ``plain`` are the members' own runners. The fused session
    is returned only if it answers :func:`shared.members.probe_images` like
    ``plain`` within ``tolerance``; otherwise None (and a warning says why), so a
    graph this module does not know how to fuse is served member by member.
    """
    mc = manifest.output.mc_dropout
    where = f"{manifest.task} v{manifest.version}"
    try:
        graph = fuse(
            members,
            input_name=manifest.input.input_name,
            output_name=manifest.output.output_name,
            mask_input=mc.mask_input if mc else None,
            transforms=manifest.tta or ["identity"],
            samples=mc.samples if mc else 1,
        )
        assumed = {p.key: p.value for p in graph.metadata_props}.get(ASSUMED, "")
        runner = FusedMembers(
            names=tuple(m.name for m in manifest.members),
            session=make_session(graph.SerializeToString()),
            input_name=manifest.input.input_name,
            mask_inputs=tuple(mask_input_name(i, mc.mask_input)
                              for i in range(len(manifest.members))) if mc else (),
            output_name=FUSED_OUTPUT,
            transforms=tuple(manifest.tta or ["identity"]),
            samples=mc.samples if mc else 1,
        )
        # Only a graph resting on assumptions is run against its members: the others
        # are the members' own operations, and some members are slow to run.
        gap = agreement(manifest, runner, plain, probe_images(manifest.input)) if assumed else 0.0
    except Exception:  # any failure means: serve the members one by one
        logger.warning("%s: members not fused; serving them one by one.", where, exc_info=True)
        return None
    if not gap <= tolerance:
        logger.warning("%s: the fused graph differs from its members by %.3g (> %.3g); "
                       "serving them one by one.", where, gap, tolerance)
        return None
    logger.info("%s: %d members fused into one graph (%s; agree within %.2g).", where,
                len(manifest.members), assumed or "exact rewrites only", gap)
    return runner


# -- rewrites of one member's graph ------------------------------------------------------


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _ancestors(tensors: Iterable[str], producers: dict[str, onnx.NodeProto]) -> set[int]:
    """ids of the nodes every one of ``tensors`` is computed from (their producers included)."""
    seen: set[int] = set()
    stack = [producers[t] for t in tensors if t in producers]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(producers[t] for t in node.input if t in producers)
    return seen


def _split_product(graph: onnx.GraphProto) -> bool:
    """``Concat(maps, axis=1) → Reshape → MatMul(W) → Reshape`` as ``Concat(MatMul(map, W))``.

    tf2onnx writes the moment branch's ``(B, K, P) @ (P, 6)`` product over the
    concatenated maps as a 2-D MatMul between two reshapes; each map's product is
    the same sums, so the maps are multiplied one by one and only the small
    results concatenated. Returns whether the pattern was found.
    """
    producers = _producers(graph)
    weights = {init.name: init for init in graph.initializer}
    for mm in graph.node:
        if mm.op_type != "MatMul" or not _INVARIANT_BRANCH.search(mm.name):
            continue
        first = producers.get(mm.input[0])
        concat = producers.get(first.input[0]) if first is not None else None
        users = [n for n in graph.node if mm.output[0] in n.input]
        weight = weights.get(mm.input[1])
        if (first is None or first.op_type != "Reshape" or concat is None
                or concat.op_type != "Concat" or len(users) != 1
                or users[0].op_type != "Reshape" or weight is None or len(weight.dims) != 2
                or [a.i for a in concat.attribute if a.name == "axis"] not in ([1], [-2])):
            continue
        final = users[0]
        parts = []
        for i, part in enumerate(concat.input):
            name = f"{final.output[0]}/part{i}"
            graph.node.append(helper.make_node("MatMul", [part, mm.input[1]], [name],
                                               name=f"{mm.name}/part{i}"))
            parts.append(name)
        graph.node.append(helper.make_node("Concat", parts, [final.output[0]], axis=1,
                                           name=f"{mm.name}/parts"))
        graph.node.remove(final)
        _sort(graph)
        _prune(graph)
        return True
    return False


def _prune(graph: onnx.GraphProto) -> None:
    """Drop the nodes no graph output needs."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    copies = [onnx.NodeProto() for _ in kept]
    for copy, node in zip(copies, reversed(kept), strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _transform_inside(graph: onnx.GraphProto, input_name: str, transforms: list[str]) -> set[str]:
    """Make the test-time copies inside the graph, as late as what precedes allows.

    Where a member starts with its sky normalisation (per-pixel arithmetic with
    scalars that no quarter turn or flip changes), the copies are made after it,
    and after what follows it while that commutes with the transforms too (the
    layout change to NCHW, a non-overlapping pooling), so all of it runs once per
    image; otherwise the copies are made of the input. The moment branch, when
    there is one, reads the untransformed rows and its features are repeated for
    every transform. Returns what the graph now assumes.
    """
    producers = _producers(graph)
    branch, source, result = _invariant_branch(graph, producers)
    cut, layout = _invariant_prefix(graph, input_name, producers, branch)
    copies = f"{cut}/transformed"
    nodes: list[onnx.NodeProto] = []
    made = [_transformed(cut, name, layout, nodes) for name in transforms]
    nodes.append(helper.make_node("Concat", made, [copies], axis=0))
    prefix = _ancestors([cut], producers) if cut != input_name else set()
    untransformed = {input_name} | {out for n in graph.node if id(n) in prefix for out in n.output}
    inside = branch if branch and source in untransformed else set()
    # (A branch reading rows that are already transformed runs on all of them.)
    if inside:
        repeated = f"{result}/every_transform"
        nodes.append(helper.make_node("Concat", [result] * len(transforms), [repeated], axis=0))
    for node in graph.node:
        if id(node) in inside:
            continue  # reads the untransformed rows
        if id(node) not in prefix:
            node.input[:] = [copies if name == cut else name for name in node.input]
        if inside:
            node.input[:] = [repeated if name == result else name for name in node.input]
    graph.node.extend(nodes)
    _sort(graph)
    assumed = set()
    if cut != input_name:
        assumed.add("sky normalisation commutes with the transforms")
    if inside:
        assumed.add("moment branch is transform-invariant")
    return assumed


def _invariant_prefix(graph: onnx.GraphProto, input_name: str,
                      producers: dict[str, onnx.NodeProto], branch: set[int]) -> tuple[str, str]:
    """Where the copies are made, and its layout (``NHWC`` or ``NCHW``).

    The sky normalisation's output when the image reaches the rest only through it,
    then on through a lone NHWC → NCHW transpose and non-overlapping pooling.
    """
    named = [node for node in graph.node if _SKY_NORMALISE.search(node.name)]
    if not named:
        return input_name, "NHWC"
    cut = named[-1].output[0]
    prefix = _ancestors([cut], producers)
    for node in graph.node:
        if input_name in node.input and id(node) not in prefix:
            return input_name, "NHWC"
    layout = "NHWC"
    while True:
        users = [n for n in graph.node if cut in n.input and id(n) not in branch]
        if len(users) != 1 or any(o.name == cut for o in graph.output):
            return cut, layout
        node, attrs = users[0], {a.name: helper.get_attribute_value(a) for a in users[0].attribute}
        if layout == "NHWC" and node.op_type == "Transpose" and list(attrs.get("perm", [])) == [
                0, 3, 1, 2]:
            cut, layout = node.output[0], "NCHW"
        elif (layout == "NCHW" and node.op_type in ("AveragePool", "MaxPool")
              and list(attrs.get("kernel_shape", [])) == list(attrs.get("strides", [0]))
              and not any(attrs.get("pads", [])) and attrs.get("auto_pad", b"NOTSET") in (
                  b"NOTSET", b"VALID") and len(node.output) == 1
              and not attrs.get("ceil_mode", 0) and len(set(attrs["kernel_shape"])) == 1):
            # Square blocks that tile the image map onto blocks under every transform
            # (an odd remainder would not: the check on load would refuse the graph).
            cut = node.output[0]
        else:
            return cut, layout


def _invariant_branch(graph: onnx.GraphProto, producers: dict[str, onnx.NodeProto]
                      ) -> tuple[set[int], str, str]:
    """The moment branch: its nodes, the tensor it reads and the features it makes.

    Empty when a graph has none, or when the branch reads anything else computed
    per row than its input (then it is not known to be transform-invariant).
    """
    named = [node for node in graph.node if _INVARIANT_BRANCH.search(node.name)]
    if not named:
        return set(), "", ""
    source, result = named[0].input[0], named[-1].output[0]
    before = _ancestors([source], producers)
    branch = _ancestors([result], producers) - before
    inside = {out for node in graph.node if id(node) in branch for out in node.output}
    constants = {init.name for init in graph.initializer}
    for node in graph.node:
        if id(node) in branch and not all(
            name in inside or name in constants or name in ("", source) for name in node.input
        ):
            return set(), "", ""
    if any(out.name == result for out in graph.output):
        return set(), "", ""
    return branch, source, result


# Each transform as ONNX ops on an NHWC tensor, exactly as shared.preprocessing's
# numpy versions move pixels (np.rot90 k=1: flip W, then swap H and W; k=3: swap, then flip W).
_STEPS: dict[str, list[tuple[str, list[int]]]] = {
    "identity": [],
    "rot180": [("flip", [1, 2])],
    "flip_lr": [("flip", [2])],
    "flip_ud": [("flip", [1])],
    "rot90": [("flip", [2]), ("swap", [])],
    "rot270": [("swap", []), ("flip", [2])],
}


def _transformed(tensor: str, transform: str, layout: str, nodes: list[onnx.NodeProto]) -> str:
    try:
        steps = _STEPS[transform]
    except KeyError:
        raise ValueError(f"unknown test-time transform {transform!r}") from None
    name = tensor
    for i, (kind, nhwc_axes) in enumerate(steps):
        out = f"{tensor}/{transform}/{i}"
        if kind == "swap":
            perm = [0, 2, 1, 3] if layout == "NHWC" else [0, 1, 3, 2]
            nodes.append(helper.make_node("Transpose", [name], [out], perm=perm))
        else:
            # H and W are axes 1 and 2 in NHWC, 2 and 3 in NCHW.
            axes = [a + (layout == "NCHW") for a in nhwc_axes]
            count = len(axes)
            starts = _constant(f"{out}/starts", np.full(count, -1, np.int64), nodes)
            ends = _constant(f"{out}/ends", np.full(count, np.iinfo(np.int64).min, np.int64),
                             nodes)
            axes_ = _constant(f"{out}/axes", np.array(axes, np.int64), nodes)
            steps_ = _constant(f"{out}/steps", np.full(count, -1, np.int64), nodes)
            nodes.append(helper.make_node("Slice", [name, starts, ends, axes_, steps_], [out]))
        name = out
    return name


def _repeat_before(graph: onnx.GraphProto, mask_input: str, samples: int) -> None:
    """Repeat the rows the MC-dropout mask multiplies ``samples`` times, inside the graph.

    Everything before the mask is deterministic, so it runs once per transformed image.
    """
    users = [node for node in graph.node if mask_input in node.input]
    if len(users) != 1 or users[0].op_type != "Mul":
        raise ValueError(f"the mask {mask_input!r} is not used by exactly one Mul")
    mul = users[0]
    (hidden,) = [name for name in mul.input if name != mask_input]
    repeated = f"{hidden}/every_sample"
    graph.node.append(helper.make_node("Concat", [hidden] * samples, [repeated], axis=0))
    mul.input[:] = [repeated if name == hidden else name for name in mul.input]
    _sort(graph)


def _constant(name: str, value: np.ndarray, nodes: list[onnx.NodeProto]) -> str:
    nodes.append(helper.make_node("Constant", [], [name],
                                  value=numpy_helper.from_array(value, name)))
    return name


def _prefixer(prefix: str, keep: set[str]):  # type: ignore[no-untyped-def]
    def rename(name: str) -> str:
        return name if name in keep else prefix + name

    return rename


def _sort(graph: onnx.GraphProto) -> None:
    """Order the nodes topologically (ONNX requires it; rewrites append at the end)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError("the graph has a cycle or reads a tensor nothing makes")
        ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ids]
        for node in ready:
            ordered.append(node)
            available.update(node.output)
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _deduplicate(graph: onnx.GraphProto) -> onnx.GraphProto:
    """Merge equal initializers, then operations with equal inputs and attributes.

    Common-subexpression elimination over the members: with their weight-free moment
    branches on the same rows, that branch (and the sky normalisation before it)
    runs once for all of them.
    """
    _sort(graph)
    same: dict[str, str] = {}
    by_value: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    initializers = []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        key = (init.data_type, tuple(init.dims), array.tobytes())
        if key in by_value:
            same[init.name] = by_value[key]
        else:
            by_value[key] = init.name
            initializers.append(init)
    seen: dict[tuple[object, ...], onnx.NodeProto] = {}
    nodes = []
    users: dict[str, int] = defaultdict(int)
    for node in graph.node:
        node.input[:] = [same.get(name, name) for name in node.input]
        signature = (node.domain, node.op_type, tuple(node.input), len(node.output),
                     tuple(_attribute_key(a) for a in node.attribute))
        if signature in seen and not node.op_type.startswith("Random"):
            for mine, theirs in zip(node.output, seen[signature].output, strict=True):
                same[mine] = theirs
            continue
        seen[signature] = node
        nodes.append(node)
        for name in node.input:
            users[name] += 1
    outputs = {o.name for o in graph.output}
    if any(name in same for name in outputs):
        raise ValueError("a graph output was merged away")
    initializers = [i for i in initializers if users[i.name]]
    return helper.make_graph(nodes, graph.name, list(graph.input), list(graph.output),
                             initializers)


def _attribute_key(attribute: onnx.AttributeProto) -> bytes:
    """An attribute's content; a constant tensor's own name does not make it different."""
    if attribute.HasField("t") and attribute.t.name:
        attribute = onnx.AttributeProto.FromString(attribute.SerializeToString())
        attribute.t.name = ""
    return attribute.SerializeToString()
