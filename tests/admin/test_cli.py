"""``skyserve-admin`` against a real Redis: it says which Redis it used, and refuses
clearly when that Redis does not answer (a key written elsewhere is never seen)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from services.admin.cli import app
from services.local_stack import free_port


def _run(*args: str, **env: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), env=env)


def test_create_list_revoke_say_which_redis(redis_url: str, key_prefix: str) -> None:
    env = {"SKYSERVE_REDIS_URL": redis_url, "SKYSERVE_KEY_PREFIX": key_prefix}
    created = _run("keys", "create", "--owner", "alice", **env)
    assert created.exit_code == 0, created.output
    assert f"Redis: {redis_url} (key prefix '{key_prefix}')" in created.stderr
    token = created.stdout.strip().splitlines()[-1]
    key_id = token.split("_")[1]
    listed = _run("keys", "list", **env)
    assert key_id in listed.stdout and "alice" in listed.stdout
    assert _run("keys", "revoke", key_id, **env).exit_code == 0
    assert _run("keys", "revoke", key_id, **env).exit_code == 1


@pytest.mark.parametrize("command", [["keys", "list"], ["keys", "create"]])
def test_an_unreachable_redis_is_a_message_not_a_traceback(command: list[str]) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = _run(*command, SKYSERVE_REDIS_URL=url)
    assert result.exit_code == 1
    said = " ".join(result.stderr.split())
    assert "cannot reach Redis at redis://:***@127.0.0.1" in said and "SKYSERVE_REDIS_URL" in said
    assert "hunter2" not in result.output and "Traceback" not in result.output
