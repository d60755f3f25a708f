"""ONNX Runtime sessions per process, created lazily and cached by (task, version).

Every member file is checked against its manifest sha256 before it is loaded. Each
version's members are also fused into one graph (:mod:`shared.fused`: one session
run per batch for the whole ensemble), checked against the members on load. The
cache follows newly published versions (looking at most every ``poll_seconds``)
and keeps serving the version it has when a newer one fails its checks or does not
load, so a broken publish never takes a task offline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import onnx
import onnxruntime as ort

from shared.errors import ModelIntegrityError, SkyserveError, UnknownTask
from shared.fused import fuse_version
from shared.members import FusedMembers, MemberRunner
from shared.registry import Manifest, Member, RegistryReader
from shared.taskdefs import TaskDefinition, load_task_definitions

__all__ = ["LoadedModel", "MemberSession", "SessionCache", "evidence_manifest", "session_options"]

_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(*, threads: int = 0, spinning: bool = True, memory_arena: bool = True,
                    optimization: str = "all") -> ort.SessionOptions:
    """ONNX Runtime options for one worker process.

    ``threads`` intra-op threads (0: ONNX Runtime's choice, every core); one
    inter-op thread (the graphs are a chain, and the worker's parallelism is its
    processes); ``spinning`` False makes idle threads sleep at once instead of
    busy-waiting, which several processes on the same cores need.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPTIMIZATION[optimization]
    options.enable_cpu_mem_arena = memory_arena
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3
    return options

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberSession:
    """One ensemble member, ready to run."""

    member: Member
    session: ort.InferenceSession
    input_name: str
    output_name: str


@dataclass(frozen=True)
class LoadedModel:
    """A registry version with a session per member; immutable, so safe to share."""

    manifest: Manifest
    members: tuple[MemberSession, ...]
    #: Every member in one session (None: the graph could not be fused; run them one by one).
    fused: FusedMembers | None = None
    #: The same members as a cheap applicability-evidence pass (:func:`evidence_manifest`),
    #: fused on its own; None where no task reads this one as evidence.
    evidence_pass: LoadedModel | None = None

    def runners(self) -> list[MemberRunner]:
        """The members one by one, as :class:`shared.members.MemberRunner`, in manifest order."""
        return [MemberRunner(m.member.name, m.session, m.input_name, m.output_name)
                for m in self.members]

    def ensemble(self) -> FusedMembers | list[MemberRunner]:
        """What answers are made with: the fused session, else the members one by one."""
        return self.fused if self.fused is not None else self.runners()

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def providers(self) -> list[str]:
        """The providers the sessions actually got (a missing CUDA falls back to CPU)."""
        return list(self.members[0].session.get_providers())


class SessionCache:
    """Loads and caches the versions a worker process serves.

    Parameters
    ----------
    registry
        Where versions are read from.
    providers
        ONNX Runtime execution providers, in order of preference, all available.
    intra_op_threads
        Threads per inference; 0 lets ONNX Runtime decide.
    spinning, memory_arena, optimization
        ONNX Runtime options (:func:`session_options`).
    fuse
        Also fuse each version's members into one session (:mod:`shared.fused`).
    poll_seconds
        Least time between two looks for a newer version of a task.
    pinned_cached
        Versions other than the latest kept loaded (least recently used go first).
    task_definitions
        Task name → definition, to check each model's output width; the ones in
        ``shared/taskdefs`` when None.
    clock
        Monotonic clock, replaceable in tests.
    """

    def __init__(
        self,
        registry: RegistryReader,
        *,
        providers: list[str],
        intra_op_threads: int = 0,
        spinning: bool = True,
        memory_arena: bool = True,
        optimization: str = "all",
        fuse: bool = True,
        poll_seconds: float = 30.0,
        pinned_cached: int = 2,
        task_definitions: Mapping[str, TaskDefinition] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.task_definitions = (
            task_definitions if task_definitions is not None else load_task_definitions()
        )
        #: Tasks some task's applicability rules read: their versions get an evidence pass.
        self._evidence_tasks = {name for definition in self.task_definitions.values()
                                for name in definition.evidence_tasks}
        self.providers = list(providers)
        self.intra_op_threads = intra_op_threads
        self.spinning = spinning
        self.memory_arena = memory_arena
        self.optimization = optimization
        self.fuse = fuse
        self.poll_seconds = poll_seconds
        self.pinned_cached = pinned_cached
        self._clock = clock
        self._lock = threading.RLock()
        self._loaded: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._current: dict[str, int] = {}
        self._polled: dict[str, float] = {}
        # Published versions never change, so one that failed stays failed in this process.
        self._broken: dict[tuple[str, int], str] = {}

    def get(self, task: str, version: int | None = None) -> LoadedModel:
        """The sessions of ``task``: a pinned ``version``, else the latest good one.

        Raises
        ------
        UnknownTask
            If no version of ``task`` is published.
        UnknownModelVersion
            If a pinned version does not exist.
        ModelIntegrityError
            If a pinned version (or, with nothing loaded yet, every version) fails its
            checksum or does not load.
        """
        with self._lock:
            if version is None:
                return self._latest(task)
            return self._pinned(task, version)

    def served(self) -> dict[str, int]:
        """Task → version this process answers with when no version is pinned."""
        with self._lock:
            return dict(self._current)

    def refused(self) -> dict[str, dict[str, str]]:
        """Task → version → why this process will not serve that version (it failed its
        checksum, did not load, or does not fit its task), for the heartbeat."""
        with self._lock:
            out: dict[str, dict[str, str]] = {}
            for (task, version), why in self._broken.items():
                out.setdefault(task, {})[str(version)] = why
            return out

    def loaded_providers(self) -> list[str]:
        """Providers of the loaded sessions (or the requested ones when nothing is loaded)."""
        with self._lock:
            for model in self._loaded.values():
                return model.providers
        return list(self.providers)

    def warm_up(self) -> dict[str, int]:
        """Load the latest good version of every published task; return what is served."""
        for task in self.registry.tasks():
            try:
                self.get(task)
            except SkyserveError:
                logger.exception("Cannot serve task %r yet.", task)
        return self.served()

    def refresh(self) -> dict[str, int]:
        """Look for newer versions of the served tasks now (if their poll is due)."""
        for task in list(self.served()):
            try:
                self.get(task)
            except SkyserveError:
                logger.exception("Refreshing task %r failed.", task)
        return self.served()

    # -- internals -------------------------------------------------------------------

    def _latest(self, task: str) -> LoadedModel:
        current = self._current.get(task)
        now = self._clock()
        if current is not None and now - self._polled.get(task, -float("inf")) < self.poll_seconds:
            return self._touch(task, current)
        try:
            versions = self.registry.versions(task)
        except OSError:
            if current is None:
                raise
            logger.warning("Cannot list versions of %r; serving v%d.", task, current, exc_info=True)
            return self._touch(task, current)
        self._polled[task] = now
        newer = [v for v in reversed(versions) if current is None or v > current]
        for version in newer:
            if (task, version) in self._broken:
                continue
            try:
                model = self._load(task, version)
            except Exception as exc:  # any failure means: do not serve it
                self._broken[(task, version)] = _why(exc)
                logger.exception(
                    "%s v%d cannot be served; keeping %s.",
                    task,
                    version,
                    f"v{current}" if current is not None else "older versions",
                )
                continue
            if current is not None:
                logger.info("%s: now serving v%d (was v%d).", task, version, current)
            self._current[task] = version
            self._store(model)
            return model
        if current is not None:
            return self._touch(task, current)
        if not versions:
            raise UnknownTask(
                f"No model serves the task {task!r}.", served_tasks=self.registry.tasks()
            )
        reasons = "; ".join(f"v{v}: {self._broken[(task, v)]}" for v in versions)
        raise ModelIntegrityError(f"No version of {task!r} can be served ({reasons}).")

    def _pinned(self, task: str, version: int) -> LoadedModel:
        key = (task, version)
        if key in self._loaded:
            return self._touch(task, version)
        if key in self._broken:
            raise ModelIntegrityError(
                f"{task} v{version} cannot be served: {self._broken[key]}. "
                "Ask for another version, or none for the latest."
            )
        try:
            model = self._load(task, version)
        except SkyserveError as exc:
            if isinstance(exc, ModelIntegrityError):
                self._broken[key] = _why(exc)
            raise
        except Exception as exc:  # ONNX Runtime raises its own types
            logger.exception("%s v%d does not load.", task, version)
            self._broken[key] = _why(exc)
            raise ModelIntegrityError(
                f"{task} v{version} cannot be served: {self._broken[key]}. "
                "Ask for another version, or none for the latest."
            ) from exc
        self._store(model)
        return model

    def _touch(self, task: str, version: int) -> LoadedModel:
        self._loaded.move_to_end((task, version))
        return self._loaded[(task, version)]

    def _store(self, model: LoadedModel) -> None:
        self._loaded[(model.task, model.version)] = model
        self._loaded.move_to_end((model.task, model.version))
        current = set(self._current.items())
        others = [key for key in self._loaded if key not in current]
        for key in others[: max(len(others) - self.pinned_cached, 0)]:
            del self._loaded[key]

    def _load(self, task: str, version: int) -> LoadedModel:
        """Verify and load every member of one version."""
        manifest = self.registry.manifest(task, version)
        if task not in self.task_definitions:
            raise UnknownTask(f"The registry serves {task!r}, but no such task is defined.")
        expected_columns = len(self.task_definitions[task].output_names)
        options = session_options(threads=self.intra_op_threads, spinning=self.spinning,
                                  memory_arena=self.memory_arena, optimization=self.optimization)
        members = []
        graphs = []
        for member in manifest.members:
            path = self.registry.member_path(manifest, member)  # sha256 checked here
            data = path.read_bytes()  # the bytes that were checked are the bytes loaded
            session = ort.InferenceSession(data, sess_options=options, providers=self.providers)
            members.append(_bind(manifest, member, session, expected_columns))
            graphs.append(data)
        model = LoadedModel(manifest=manifest, members=tuple(members))
        # Parsed once: fusing copies each member graph, it never edits them.
        protos = [onnx.load_from_string(g) for g in graphs] if self.fuse else []

        def fused(served: Manifest) -> FusedMembers | None:
            """The members fused into one session that serves ``served``'s transforms
            and samples (None when fusing is off or the graphs cannot be fused)."""
            if not self.fuse:
                return None
            return fuse_version(
                served,
                protos,
                lambda graph: ort.InferenceSession(graph, sess_options=options,
                                                   providers=self.providers),
                model.runners(),
            )

        model = replace(model, fused=fused(manifest))
        if task in self._evidence_tasks:
            cheap = evidence_manifest(manifest)
            # The fused graph makes its manifest's transforms and samples itself, so the
            # evidence pass (one view, one sample) gets a graph of its own.
            model = replace(model, evidence_pass=LoadedModel(
                manifest=cheap, members=model.members, fused=fused(cheap)))
        logger.info(
            "Loaded %s v%d (%d members%s) on %s.",
            task,
            version,
            len(members),
            ", fused" if model.fused is not None else "",
            members[0].session.get_providers(),
        )
        return model


def _why(exc: Exception) -> str:
    """A client-safe reason: our own errors say what failed, others only their type."""
    if isinstance(exc, SkyserveError):
        return exc.detail
    return f"its model file does not load ({type(exc).__name__})"


def _bind(
    manifest: Manifest, member: Member, session: ort.InferenceSession, columns: int
) -> MemberSession:
    """Check a session's signature against the manifest and task; name its input and output."""
    where = f"{manifest.task} v{manifest.version} {member.file}"
    inputs = {i.name: i for i in session.get_inputs()}
    spec = manifest.input
    if spec.input_name not in inputs:
        raise ModelIntegrityError(f"{where} has no input {spec.input_name!r} (has {list(inputs)}).")
    shape = inputs[spec.input_name].shape
    expected = [spec.size, spec.size, spec.channels]
    if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected)):
        raise ModelIntegrityError(
            f"{where} takes {shape}, not (N, {', '.join(map(str, expected))})."
        )
    mc = manifest.output.mc_dropout
    if mc is not None:
        mask = inputs.get(mc.mask_input)
        if mask is None or (isinstance(mask.shape[-1], int) and mask.shape[-1] != mc.units):
            raise ModelIntegrityError(
                f"{where} has no MC-dropout mask input {mc.mask_input!r} of width {mc.units}."
            )
    outputs = {o.name: o for o in session.get_outputs()}
    name = manifest.output.output_name or session.get_outputs()[0].name
    if name not in outputs:
        raise ModelIntegrityError(f"{where} has no output {name!r} (has {list(outputs)}).")
    last = outputs[name].shape[-1] if outputs[name].shape else None
    if isinstance(last, int) and len(outputs[name].shape) > 1 and last != columns:
        raise ModelIntegrityError(f"{where} gives {last} columns; the task has {columns}.")
    return MemberSession(
        member=member, session=session, input_name=spec.input_name, output_name=name
    )


def evidence_manifest(manifest: Manifest) -> Manifest:
    """``manifest`` as a cheap evidence pass: the identity view only (no test-time
    transforms) and, with MC dropout, one all-ones mask (the members' deterministic output)."""
    update: dict[str, object] = {"tta": ["identity"]}
    mc = manifest.output.mc_dropout
    if mc is not None:  # rate 0 keeps every unit: the mask is all ones
        update["output"] = manifest.output.model_copy(
            update={"mc_dropout": mc.model_copy(update={"samples": 1, "rate": 0.0})})
    return manifest.model_copy(update=update)
