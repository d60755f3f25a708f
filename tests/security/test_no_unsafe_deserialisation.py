"""No pickle, eval or exec on anything a client sends (issue 8), kept so by a scan.

Celery moves only JSON (a pickled message from a hostile Redis client would run code
in the worker); no module of ours calls pickle/marshal loads, eval, exec or an
unsafe YAML loader. ``SkyserveError.__reduce__`` exists so errors *can* pickle, but
nothing unpickles them: the job record in Redis is JSON.
"""

from __future__ import annotations

import ast
from pathlib import Path

from services.api.queue import JobQueue
from services.worker.celery_app import create_celery_app
from services.worker.settings import WorkerSettings
from shared.settings import REPO_ROOT, SkyserveSettings

_PACKAGES = ("shared", "services")
_FORBIDDEN_CALLS = {
    ("pickle", "loads"), ("pickle", "load"), ("pickle", "Unpickler"),
    ("marshal", "loads"), ("marshal", "load"), ("dill", "loads"), ("cloudpickle", "loads"),
    ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"),
    ("numpy", "load"), ("np", "load"), ("shelve", "open"), ("jsonpickle", "decode"),
}
_FORBIDDEN_NAMES = {"eval", "exec", "__import__"}


def _sources() -> list[Path]:
    return [p for pkg in _PACKAGES for p in sorted((REPO_ROOT / pkg).rglob("*.py"))]


def test_no_module_deserialises_unsafely_or_evaluates_code() -> None:
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in _FORBIDDEN_NAMES:
                found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {func.id}()")
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if (func.value.id, func.attr) in _FORBIDDEN_CALLS:
                    allow = func.attr == "load" and func.value.id in ("np", "numpy") and any(
                        k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
                        for k in node.keywords
                    )
                    if not allow:
                        found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {func.value.id}.{func.attr}()")
    assert not found, "unsafe deserialisation or code evaluation:\n" + "\n".join(found)


def test_the_scan_would_catch_one() -> None:
    tree = ast.parse("import pickle\npickle.loads(body)\neval(text)\n")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert len(calls) == 2  # the walker sees both; the rule above names them


def test_celery_moves_json_only(redis_url: str) -> None:
    worker = create_celery_app(WorkerSettings(redis_url=redis_url))
    assert worker.conf.task_serializer == "json"
    assert list(worker.conf.accept_content) == ["json"]
    assert worker.conf.result_serializer == "json"
    api = JobQueue(SkyserveSettings(redis_url=redis_url))
    assert api.celery.conf.task_serializer == "json"
