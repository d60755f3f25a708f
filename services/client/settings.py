"""Client settings: where the API is and how to authenticate (``SKYSERVE_*`` variables)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_URL", "ClientSettings"]

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientSettings(BaseSettings):
    """Configuration of the client and the ``skyserve`` CLI.

    Deliberately not built on ``shared.settings.SkyserveSettings``: the client runs on
    users' machines and needs none of the server's fields (Redis, registry, limits).
    It uses the same ``SKYSERVE_`` prefix so one environment configures both sides.

    - ``SKYSERVE_URL`` (str, default ``http://127.0.0.1:8000``): base URL of the API; it
      may include a path prefix when the API sits behind a proxy.
    - ``SKYSERVE_API_KEY`` (secret, unset): sent as ``Authorization: Bearer <key>``.
    - ``SKYSERVE_CLIENT_TIMEOUT`` (float, 30): seconds to connect and to read one response;
      long polls add the time they ask the server to wait.
    """

    model_config = SettingsConfigDict(env_prefix="SKYSERVE_", extra="ignore")

    url: str = Field(default=DEFAULT_URL, description="Base URL of the skyserve API.")
    api_key: SecretStr | None = Field(
        default=None, description="API key, sent as 'Authorization: Bearer <key>'."
    )
    client_timeout: float = Field(
        default=30.0, gt=0, description="Seconds to wait for one response (long polls add theirs)."
    )
