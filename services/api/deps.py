"""Dependencies read from ``app.state``; handlers declare them as types."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.api.queue import JobQueue
from services.api.settings import ApiSettings
from services.api.waiting import JobReader, JobWaiter
from shared.batchstore import BatchStore
from shared.jobstore import JobStore
from shared.registry import RegistryReader

__all__ = [
    "SettingsDep",
    "StoreDep",
    "BatchStoreDep",
    "RegistryDep",
    "QueueDep",
    "ReaderDep",
    "WaiterDep",
]


def _settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def _store(request: Request) -> JobStore:
    return request.app.state.store


def _batches(request: Request) -> BatchStore:
    return request.app.state.batches


def _registry(request: Request) -> RegistryReader:
    return request.app.state.registry


def _queue(request: Request) -> JobQueue:
    return request.app.state.queue


def _reader(request: Request) -> JobReader:
    return request.app.state.reader


def _waiter(request: Request) -> JobWaiter:
    return request.app.state.waiter


SettingsDep = Annotated[ApiSettings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
BatchStoreDep = Annotated[BatchStore, Depends(_batches)]
RegistryDep = Annotated[RegistryReader, Depends(_registry)]
QueueDep = Annotated[JobQueue, Depends(_queue)]
ReaderDep = Annotated[JobReader, Depends(_reader)]
WaiterDep = Annotated[JobWaiter, Depends(_waiter)]
