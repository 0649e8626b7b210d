"""In-memory state of one emulator instance (nothing is shared between instances)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, MutableMapping, TypeVar

import orjson
from aiohttp import web

from .journal import Journal
from .settings import EmulatorSettings
from .throttling import Throttles

K = TypeVar("K")
V = TypeVar("V")


@dataclass
class StoredFile:
    info: dict[str, Any]  # the `file` object returned by the API
    data: bytes


@dataclass
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]


class BoundedStore(MutableMapping[K, V], Generic[K, V]):
    """A dict in insertion order that forgets its oldest items beyond `max_items`, or beyond
    `max_bytes` as measured by `size` (taken once, when an item is stored). The newest item always stays."""

    def __init__(self, max_items: int, max_bytes: int | None = None, size: Callable[[V], int] | None = None) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._size = size
        self._items: dict[K, V] = {}
        self._sizes: dict[K, int] = {}
        self._bytes = 0

    @property
    def retained_bytes(self) -> int:
        return self._bytes

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __setitem__(self, key: K, value: V) -> None:
        size = self._size(value) if self._size is not None else 0
        self._bytes += size - self._sizes.get(key, 0)
        self._items[key] = value
        self._sizes[key] = size
        self._evict()

    def __delitem__(self, key: K) -> None:
        del self._items[key]
        self._bytes -= self._sizes.pop(key)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __repr__(self) -> str:
        return f"BoundedStore({self._items!r})"

    def _evict(self) -> None:
        while len(self._items) > 1 and (
            len(self._items) > self.max_items or (self.max_bytes is not None and self._bytes > self.max_bytes)
        ):
            del self[next(iter(self._items))]


def _file_size(stored: StoredFile) -> int:
    return len(stored.data)


def _response_size(stored: StoredResponse) -> int:
    # Stored responses echo the request (input items, instructions, tools): measure them as JSON.
    return len(orjson.dumps(stored.response)) + len(orjson.dumps(stored.input_items))


@dataclass
class EmulatorState:
    settings: EmulatorSettings
    base_url: str = ""  # set once the server listens; used for generated image URLs
    # All bounded by the settings (`journal_*`, `store_*`); built from them below.
    journal: Journal = field(init=False)
    files: BoundedStore[str, StoredFile] = field(init=False)
    responses: BoundedStore[str, StoredResponse] = field(init=False)
    batches: BoundedStore[str, dict[str, Any]] = field(init=False)
    images: BoundedStore[str, bytes] = field(init=False)  # served at /_emulator/images/{id}.png
    throttles: Throttles = field(init=False)  # from the settings, changed at run time over /_emulator/throttle

    def __post_init__(self) -> None:
        settings = self.settings
        self.journal = Journal(settings.journal_max_requests, settings.journal_max_bytes)
        items, max_bytes = settings.store_max_items, settings.store_max_bytes
        self.files = BoundedStore(items, max_bytes, _file_size)
        self.responses = BoundedStore(items, max_bytes, _response_size)
        self.batches = BoundedStore(items)
        self.images = BoundedStore(items)  # each entry is the same small PNG
        self.throttles = Throttles(settings.throttles)


STATE = web.AppKey("emulator_state", EmulatorState)
