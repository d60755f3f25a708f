"""Static checks of docker-compose.yml and the Dockerfiles under deploy/.

No Docker engine runs on the development and CI machines, so these tests check
what a ``docker compose up --build`` would trip over first: build contexts,
Dockerfiles, ``COPY`` sources, volumes, bind mounts, image tags and the Python
modules each service's command starts, all against the files in the repository.
When Debian's ``docker-compose`` (1.29) is installed, its own ``config -q`` also
validates the file against the Compose schema.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.requirements import require_tool

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
SCALABLE_WORKERS = ("worker",)


# --------------------------------------------------------------------------- helpers


_VAR = re.compile(r"\$\$|\$\{(?P<braced>[^}]*)\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str) -> str:
    """Resolve compose-style variables the way an empty environment would.

    ``${VAR:-default}`` and ``${VAR-default}`` become ``default``, ``${VAR}`` and
    ``$VAR`` become the empty string, ``$$`` becomes ``$``.
    """

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        braced = m.group("braced")
        if braced is None:
            return ""
        for sep in (":-", "-", ":?", "?"):
            if sep in braced:
                _, default = braced.split(sep, 1)
                return default if sep in (":-", "-") else ""
        return ""

    return _VAR.sub(repl, value)


@cache
def compose() -> dict[str, Any]:
    """The parsed docker-compose.yml (YAML anchors and merge keys resolved)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def built_services() -> list[str]:
    return [name for name, svc in services().items() if "build" in svc]


def build_of(svc: dict[str, Any]) -> tuple[Path, Path]:
    """Return (context dir, Dockerfile path) of a service with a ``build`` key."""
    build = svc["build"]
    if isinstance(build, str):
        context, dockerfile = interpolate(build), "Dockerfile"
    else:
        context = interpolate(build.get("context", "."))
        dockerfile = interpolate(build.get("dockerfile", "Dockerfile"))
    ctx = (COMPOSE_FILE.parent / context).resolve()
    return ctx, (ctx / dockerfile).resolve()


def as_argv(value: Any) -> list[str]:
    """A compose ``command``/``entrypoint`` (list or string) as an interpolated argv."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(interpolate(value))
    return [interpolate(str(v)) for v in value]


@dataclass
class Mount:
    source: str | None
    target: str
    read_only: bool
    kind: str  # "volume", "bind" or "tmpfs"


def mounts(svc: dict[str, Any]) -> list[Mount]:
    """The service's ``volumes`` entries, short or long syntax, classified."""
    out: list[Mount] = []
    for entry in svc.get("volumes", []):
        if isinstance(entry, str):
            parts = interpolate(entry).split(":")
            if len(parts) == 1:
                out.append(Mount(None, parts[0], False, "volume"))  # anonymous volume
                continue
            source, target = parts[0], parts[1]
            options = parts[2].split(",") if len(parts) > 2 else []
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            out.append(Mount(source, target, "ro" in options, kind))
        else:
            kind = entry.get("type", "volume")
            source = entry.get("source")
            out.append(
                Mount(
                    interpolate(source) if source else None,
                    interpolate(entry["target"]),
                    bool(entry.get("read_only", False)),
                    kind,
                )
            )
    return out


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM stage it belongs to; -1 before the first FROM


@dataclass
class Dockerfile:
    path: Path
    instructions: list[Instruction] = field(default_factory=list)
    global_args: dict[str, str] = field(default_factory=dict)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def final_stage(self) -> list[Instruction]:
        last = max(i.stage for i in self.instructions)
        return [i for i in self.instructions if i.stage == last]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Parse a Dockerfile into instructions, joining ``\\`` continuations.

    Comment lines (parser directives included) are dropped, also inside a
    continued instruction, as Docker does.
    """
    df = Dockerfile(path)
    logical: list[str] = []
    current = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    if current.strip():
        logical.append(current)
    stage = -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        if keyword == "ARG" and stage == -1:
            name, _, default = args.strip().partition("=")
            df.global_args[name] = default.strip().strip('"')
        df.instructions.append(Instruction(keyword, args.strip(), stage))
    return df


def resolve_args(value: str, args: dict[str, str]) -> str:
    return re.sub(
        r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)",
        lambda m: args.get(m.group(1) or m.group(2), ""),
        value,
    )


def copy_sources(ins: Instruction) -> tuple[list[str], dict[str, str]]:
    """Return (sources, flags) of a COPY/ADD instruction, exec or shell form."""
    flags: dict[str, str] = {}
    rest = ins.args
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        name, _, value = flag[2:].partition("=")
        flags[name] = value
        rest = rest.lstrip()
    words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    return words[:-1], flags


def exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT arguments as an argv (shell form split like a shell would)."""
    args = args.strip()
    if args.startswith("["):
        return [str(a) for a in json.loads(args)]
    return shlex.split(args)


def image_is_pinned(image: str) -> bool:
    """True when ``image`` names an explicit tag other than ``latest``, or a digest."""
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    return last.rsplit(":", 1)[1] not in ("", "latest")


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """The root .dockerignore as (is_exception, regex) pairs, in file order."""
    path = REPO / ".dockerignore"
    out: list[tuple[bool, re.Pattern[str]]] = []
    if not path.exists():
        return out
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        out.append((negate, re.compile(regex + r"\Z")))
    return out


def dockerignored(relpath: str) -> bool:
    """Whether .dockerignore drops ``relpath`` (or a folder above it) from the context."""
    parts = Path(relpath).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for candidate in candidates:
        for negate, regex in dockerignore_patterns():
            if regex.match(candidate):
                excluded = not negate
        if excluded:
            return True
    return False


def module_file(module: str, *, runnable: bool = False) -> list[Path]:
    """The files that would make ``module`` importable (or ``python -m`` runnable)."""
    base = REPO.joinpath(*module.split("."))
    if runnable:
        return [base.with_suffix(".py"), base / "__main__.py"]
    return [base.with_suffix(".py"), base / "__init__.py"]


def modules_in_argv(argv: list[str]) -> list[tuple[str, bool]]:
    """Python modules an argv starts, as (dotted name, needs ``python -m`` runnability).

    Understands ``python -m MOD``, ``celery -A MOD`` / ``--app MOD`` / ``--app=MOD``
    and ``uvicorn [options] MOD:ATTR``.
    """
    found: list[tuple[str, bool]] = []
    if not argv:
        return found
    prog = Path(argv[0]).name
    for i, word in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if prog.startswith("python") and word == "-m" and nxt:
            found.append((nxt, True))
            break
        if word in ("-A", "--app") and nxt:
            found.append((nxt.split(":")[0], False))
        elif word.startswith("--app="):
            found.append((word.split("=", 1)[1].split(":")[0], False))
    if prog == "uvicorn":
        for word in argv[1:]:
            if not word.startswith("-") and re.fullmatch(r"[\w.]+:[\w.]+", word):
                found.append((word.split(":")[0], False))
    return found


def dockerfiles() -> dict[str, Dockerfile]:
    """Parsed Dockerfile of each built service whose Dockerfile exists."""
    out: dict[str, Dockerfile] = {}
    for name in built_services():
        _, path = build_of(services()[name])
        if path.exists():
            out[name] = parse_dockerfile(path)
    return out


# --------------------------------------------------------------------------- the file


def test_compose_file_parses_and_names_the_services() -> None:
    expected = {"redis", "api", "worker", "worker-gpu", "trainer", "flower"}
    assert expected <= set(services()), f"missing services: {expected - set(services())}"


@pytest.mark.parametrize("name", built_services())
def test_build_context_and_dockerfile_exist(name: str) -> None:
    context, dockerfile = build_of(services()[name])
    assert context.is_dir(), f"{name}: build context {context} does not exist"
    assert dockerfile.is_file(), f"{name}: Dockerfile {dockerfile} does not exist"
    assert REPO in (dockerfile, *dockerfile.parents), f"{name}: Dockerfile outside the repo"


@pytest.mark.parametrize("name", built_services())
def test_copy_sources_exist_in_context(name: str) -> None:
    context, path = build_of(services()[name])
    df = parse_dockerfile(path)
    problems: list[str] = []
    for ins in df.of("COPY") + df.of("ADD"):
        sources, flags = copy_sources(ins)
        if "from" in flags:  # copied from another stage or image, not the context
            continue
        for src in sources:
            src = resolve_args(src, df.global_args)
            if re.match(r"^(https?|git)://", src):
                continue
            matches = list(context.glob(src.rstrip("/"))) if any(c in src for c in "*?[") else []
            target = context / src
            if not (matches or target.exists()):
                problems.append(f"{ins.keyword} {src}: not in {context}")
            elif dockerignored(src.rstrip("/")):
                problems.append(f"{ins.keyword} {src}: excluded by .dockerignore")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_named_volumes_are_declared_and_bind_mounts_exist() -> None:
    declared = set((compose().get("volumes") or {}).keys())
    problems: list[str] = []
    for name, svc in services().items():
        for m in mounts(svc):
            if m.kind == "volume" and m.source and m.source not in declared:
                problems.append(f"{name}: volume {m.source!r} is not declared under volumes:")
            if m.kind == "bind" and m.source:
                host = (COMPOSE_FILE.parent / Path(m.source).expanduser()).resolve()
                if not host.exists():
                    problems.append(f"{name}: bind-mounted {m.source} does not exist")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", SCALABLE_WORKERS)
def test_worker_can_be_scaled(name: str) -> None:
    svc = services()[name]
    assert "container_name" not in svc, "container_name forbids --scale"
    assert "hostname" not in svc, "replicas need distinct hostnames (Celery node names)"
    assert not svc.get("ports"), "host ports would collide between replicas"


def test_gpu_worker_has_profile_and_nvidia_reservation() -> None:
    svc = services()["worker-gpu"]
    assert "gpu" in svc.get("profiles", [])
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    nvidia = [d for d in devices if d.get("driver") == "nvidia"]
    assert nvidia, "no NVIDIA device reservation"
    assert "gpu" in nvidia[0].get("capabilities", [])
    count = nvidia[0].get("count", nvidia[0].get("device_ids"))
    assert count == "all" or (isinstance(count, int) and count >= 1) or count
    assert onnx_providers("worker-gpu")[0] == "CUDAExecutionProvider", "must prefer CUDA"


def onnx_providers(name: str) -> list[str]:
    """A worker's SKYSERVE_ONNX_PROVIDERS, which the worker settings read as a JSON list."""
    env = services()[name].get("environment", {})
    raw = interpolate(str(env.get("SKYSERVE_ONNX_PROVIDERS", "")))
    providers = json.loads(raw)
    assert isinstance(providers, list) and providers, f"{name}: {raw!r} is not a JSON list"
    return providers


def test_cpu_worker_asks_for_the_cpu_provider() -> None:
    assert onnx_providers("worker") == ["CPUExecutionProvider"]


def test_trainer_is_on_demand_and_only_it_writes_models() -> None:
    assert "train" in services()["trainer"].get("profiles", [])
    for name, svc in services().items():
        for m in mounts(svc):
            if m.source == "models":
                assert m.read_only == (name != "trainer"), (
                    f"{name}: models must be {'read-write' if name == 'trainer' else 'read-only'}"
                )
    models_users = {
        n for n, s in services().items() if any(m.source == "models" for m in mounts(s))
    }
    assert {"api", "worker", "worker-gpu", "trainer"} <= models_users


def test_models_volume_is_where_settings_look() -> None:
    for name, svc in services().items():
        for m in mounts(svc):
            if m.source == "models":
                env = svc.get("environment", {})
                assert interpolate(str(env.get("SKYSERVE_MODELS_DIR", ""))) == m.target, name


def redis_config(svc: dict[str, Any]) -> dict[str, str]:
    """Effective redis settings: the config file named on the command line, then flags."""
    argv = as_argv(svc.get("command"))
    binds = {m.target: m.source for m in mounts(svc) if m.kind == "bind" and m.source}
    settings: dict[str, str] = {}
    for word in argv[1:]:
        if word.endswith(".conf"):
            assert word in binds, f"redis config {word} is not bind-mounted from the repo"
            text = (COMPOSE_FILE.parent / binds[word]).read_text(encoding="utf-8")
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    key, _, value = line.partition(" ")
                    settings[key.lower()] = value.strip().strip('"')
    for i, word in enumerate(argv):
        if word.startswith("--") and i + 1 < len(argv):
            settings[word[2:].lower()] = argv[i + 1]
    return settings


def test_redis_keeps_an_append_only_file_and_never_evicts() -> None:
    svc = services()["redis"]
    conf = redis_config(svc)
    assert conf.get("appendonly") == "yes"
    assert conf.get("appendfsync") in ("everysec", "always")
    assert conf.get("maxmemory-policy") == "noeviction", "evicting would drop broker messages"
    cap = interpolate(conf.get("maxmemory", "0"))
    assert cap not in ("", "0"), "without a maxmemory cap Redis grows until the host kills it"
    data_dir = conf.get("dir", "/data")
    assert any(m.kind == "volume" and m.target == data_dir for m in mounts(svc)), (
        f"redis data dir {data_dir} is not on a named volume"
    )
    assert "ping" in " ".join(svc["healthcheck"]["test"])


def test_dependents_wait_for_a_healthy_redis() -> None:
    for name in ("api", "worker", "worker-gpu", "flower"):
        depends = services()[name].get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: use the long depends_on form"
        assert depends.get("redis", {}).get("condition") == "service_healthy", name


def test_api_publishes_8000_and_checks_healthz() -> None:
    svc = services()["api"]
    assert any(interpolate(str(p)).endswith(":8000") for p in svc.get("ports", []))
    assert "/healthz" in " ".join(svc["healthcheck"]["test"])
    _, path = build_of(svc)
    checks = parse_dockerfile(path).of("HEALTHCHECK")
    assert checks and "/healthz" in checks[-1].args, (
        "api.Dockerfile needs a HEALTHCHECK on /healthz"
    )


def test_flower_on_5555() -> None:
    svc = services()["flower"]
    assert any(interpolate(str(p)).endswith(":5555") for p in svc.get("ports", []))


def test_no_image_is_latest_or_untagged() -> None:
    problems: list[str] = []
    for name, svc in services().items():
        if "image" in svc and not image_is_pinned(interpolate(svc["image"])):
            problems.append(f"compose {name}: image {svc['image']!r}")
        if "build" in svc and "image" not in svc:
            problems.append(f"compose {name}: built without an image name, so tagged :latest")
    for name, df in dockerfiles().items():
        stages: set[str] = set()
        for ins in df.of("FROM"):
            words = [w for w in ins.args.split() if not w.startswith("--")]
            image = resolve_args(words[0], df.global_args)
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2])
            if image in stages or image == "scratch":
                continue
            if not image_is_pinned(image):
                problems.append(f"{df.path.name}: FROM {words[0]} -> {image!r}")
    texts = [COMPOSE_FILE] + [df.path for df in dockerfiles().values()]
    for path in texts:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r":latest\b", line):
                problems.append(f"{path.name}:{n}: {line.strip()}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", built_services())
def test_image_runs_as_non_root(name: str) -> None:
    _, path = build_of(services()[name])
    users = [
        i.args.split(":")[0] for i in parse_dockerfile(path).final_stage() if i.keyword == "USER"
    ]
    assert users, f"{path.name}: final stage has no USER"
    assert users[-1] not in ("root", "0"), f"{path.name}: runs as root"
    assert "user" not in services()[name] or services()[name]["user"] not in ("root", "0")


@pytest.mark.parametrize("name", built_services())
def test_dependencies_installed_before_source_is_copied(name: str) -> None:
    """The dependency layer must not depend on the source, or every edit reinstalls."""
    _, path = build_of(services()[name])
    ins = parse_dockerfile(path).instructions
    installs = [n for n, i in enumerate(ins) if i.keyword == "RUN" and "pip install" in i.args]
    source_copies = [
        n
        for n, i in enumerate(ins)
        if i.keyword in ("COPY", "ADD")
        and "from" not in copy_sources(i)[1]
        and any(s.rstrip("/") in ("services", "shared", ".") for s in copy_sources(i)[0])
    ]
    assert installs, f"{path.name}: no pip install"
    assert source_copies, f"{path.name}: never copies the source"
    assert max(installs) < min(source_copies), f"{path.name}: source copied before pip install"


def service_commands() -> list[tuple[str, str, list[str]]]:
    """(service, where, argv) of what each service runs, per compose and per Dockerfile.

    Compose: ``entrypoint`` + ``command``; Dockerfile (final stage): ENTRYPOINT + CMD.
    """
    out: list[tuple[str, str, list[str]]] = []
    dfs = dockerfiles()
    for name, svc in services().items():
        if name == "redis":
            continue
        if "entrypoint" in svc or "command" in svc:
            argv = as_argv(svc.get("entrypoint")) + as_argv(svc.get("command"))
            out.append((name, "compose", argv))
        if name in dfs:
            final = dfs[name].final_stage()
            argv = []
            for keyword in ("ENTRYPOINT", "CMD"):
                found = [i for i in final if i.keyword == keyword]
                if found:
                    argv += exec_form(found[-1].args)
            out.append((name, dfs[name].path.name, argv))
    return out


@pytest.mark.parametrize(
    ("name", "where", "argv"),
    service_commands(),
    ids=[f"{n}-{'compose' if w == 'compose' else 'dockerfile'}" for n, w, _ in service_commands()],
)
def test_commands_start_modules_that_exist(name: str, where: str, argv: list[str]) -> None:
    """Each command names real modules: ``services.api.app`` needs services/api/app.py.

    The services are written alongside this file; until a module lands, its test
    fails and says which file is missing.
    """
    modules = modules_in_argv(argv)
    assert modules, f"{name} ({where}): no Python module found in {argv}"
    for module, runnable in modules:
        candidates = module_file(module, runnable=runnable)
        assert any(c.is_file() for c in candidates), (
            f"{name} ({where}): {module} not found; expected one of "
            + ", ".join(str(c.relative_to(REPO)) for c in candidates)
        )


def test_trainer_entrypoint_runs_the_console_script_package() -> None:
    """``python -m services.trainer`` and ``skyserve-train`` are the same program."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    train_cli = project["scripts"]["skyserve-train"].split(":")[0]
    entry = modules_in_argv(as_argv(services()["trainer"]["entrypoint"]))
    assert entry, "the trainer has no python -m entrypoint"
    assert train_cli.startswith(entry[0][0] + "."), (entry, train_cli)


# --------------------------------------------------------------------------- docker-compose


@pytest.mark.parametrize("profiles", [[], ["--profile", "gpu", "--profile", "train"]])
def test_docker_compose_config_validates(profiles: list[str]) -> None:
    # Without the binary this skips (the static checks above still ran); on CI it fails.
    exe = require_tool("docker-compose", package="docker-compose")
    proc = subprocess.run(
        [exe, "-f", str(COMPOSE_FILE), *profiles, "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr or proc.stdout


# --------------------------------------------------------------------------- serving images

#: Distributions only the trainer needs; a serving image must not carry them.
TRAINER_ONLY_DISTS = {"tensorflow", "tensorflow-cpu", "tf2onnx", "galsim", "matplotlib", "keras-tuner"}
#: Modules a serving process must never need (matplotlib: astropy's ImageNormalize).
TRAINER_ONLY_MODULES = ("matplotlib", "tensorflow", "tf2onnx", "galsim", "keras")


def _installed_extras(dockerfile: Path) -> list[str]:
    """The extras a Dockerfile installs through ``deploy/pyproject_deps.py``."""
    runs = [i.args for i in parse_dockerfile(dockerfile).of("RUN") if "pyproject_deps.py" in i.args]
    assert runs, f"{dockerfile.name}: no 'python deploy/pyproject_deps.py EXTRA' install"
    found = re.search(r"pyproject_deps\.py\s+([A-Za-z0-9_\- ]*?)\s*>", runs[0])
    assert found, runs[0]
    return found.group(1).split()


@pytest.mark.parametrize(
    ("dockerfile", "extras"),
    [("worker.Dockerfile", ["worker"]), ("worker-gpu.Dockerfile", ["worker-gpu"]),
     ("api.Dockerfile", ["api"])],
)
def test_serving_images_install_only_serving_extras(dockerfile: str, extras: list[str]) -> None:
    """Workers and the API get their own extra, never the trainer's packages."""
    import importlib.util

    path = REPO / "deploy" / dockerfile
    assert _installed_extras(path) == extras
    spec = importlib.util.spec_from_file_location("pyproject_deps", REPO / "deploy/pyproject_deps.py")
    assert spec and spec.loader
    deps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deps)
    names = {
        re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()
        for req in deps.requirements(REPO / "pyproject.toml", extras)
    }
    assert not names & TRAINER_ONLY_DISTS, f"{dockerfile} installs {names & TRAINER_ONLY_DISTS}"


_BLOCKED_IMPORTS = """
import io, sys
# None in sys.modules is Python's own way of saying "this module cannot be imported":
# import raises ModuleNotFoundError and importlib.util.find_spec answers None.
for name in {blocked!r}:
    sys.modules[name] = None
import numpy as np
from astropy.io import fits
import services.worker.celery_app, services.worker.tasks, services.worker.answers
from shared.preprocessing import decode_image
buffer = io.BytesIO()
fits.PrimaryHDU(np.outer(np.hanning(40), np.hanning(50)).astype("float32") * 1e4).writeto(buffer)
image = decode_image(buffer.getvalue(), max_pixels=10**6)
assert image.shape == (40, 50, 3) and 0.0 <= image.min() and image.max() <= 1.0, image.shape
print("ok")
"""


def test_worker_import_graph_decodes_fits_without_trainer_packages() -> None:
    """The worker's modules import, and a FITS file decodes, with matplotlib & co. blocked."""
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORTS.format(blocked=set(TRAINER_ONLY_MODULES))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
