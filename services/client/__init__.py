"""Python clients and the ``skyserve`` command line for the skyserve HTTP API.

>>> from services.client import SkyserveClient
>>> with SkyserveClient("http://127.0.0.1:8000") as sky:
...     job = sky.wait_job(sky.submit_image("galaxy.png").id, timeout=60)
"""

from services.client.aio import AsyncSkyserveClient
from services.client.errors import (
    SkyserveAPIError,
    SkyserveClientError,
    SkyserveConnectionError,
    SkyserveTimeoutError,
)
from services.client.http import SkyserveClient
from services.client.settings import ClientSettings

__all__ = [
    "SkyserveClient",
    "AsyncSkyserveClient",
    "ClientSettings",
    "SkyserveClientError",
    "SkyserveAPIError",
    "SkyserveConnectionError",
    "SkyserveTimeoutError",
]
