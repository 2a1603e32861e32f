"""A real zarr store wrapper that injects latency and runs hooks on chosen operations.

It wraps any zarr store (LocalStore, MemoryStore, FsspecStore) and forwards every call
to it, so what a test observes is the real backend's behaviour, only slower or
interleaved with another writer at a chosen moment. Hooks run in a worker thread
(``asyncio.to_thread``) while the calling coroutine waits, so a hook may itself use a
bobx store (zarr's event loop stays free to serve it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

Hook = Callable[[str], None]


class FaultyStore(WrapperStore[Any]):
    """Delays ``get`` / listings by fixed latencies; calls ``on_get`` / ``on_set`` hooks."""

    def __init__(
        self,
        store: Any,
        *,
        get_latency: float = 0.0,
        list_latency: float = 0.0,
        on_get: Hook | None = None,
        on_set: Hook | None = None,
    ) -> None:
        super().__init__(store)
        self.get_latency, self.list_latency = get_latency, list_latency
        self.on_get, self.on_set = on_get, on_set

    def _with_store(self, store: Any) -> FaultyStore:
        return FaultyStore(
            store,
            get_latency=self.get_latency,
            list_latency=self.list_latency,
            on_get=self.on_get,
            on_set=self.on_set,
        )

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if self.on_get is not None:
            await asyncio.to_thread(self.on_get, key)
        if self.get_latency:
            await asyncio.sleep(self.get_latency)
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        ranges = list(key_ranges)
        if self.get_latency:
            await asyncio.sleep(self.get_latency * len(ranges))
        return await self._store.get_partial_values(prototype, ranges)

    async def set(self, key: str, value: Buffer) -> None:
        if self.on_set is not None:
            await asyncio.to_thread(self.on_set, key)
        await self._store.set(key, value)

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        if self.list_latency:
            await asyncio.sleep(self.list_latency)
        async for name in self._store.list_dir(prefix):
            yield name

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        if self.list_latency:
            await asyncio.sleep(self.list_latency)
        async for name in self._store.list_prefix(prefix):
            yield name
