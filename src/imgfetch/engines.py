"""Engines: how fetch attempts are scheduled.  Chosen from a table, never an ``if`` chain.

All engines run the same :mod:`imgfetch.pipeline`; they differ only in what
executes one attempt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgfetch.errors import EngineUnavailable
from imgfetch.fetch.aio import AioClient

if TYPE_CHECKING:
    from collections.abc import Callable

    from yarl import URL

    from imgfetch.config import HttpConfig
    from imgfetch.fetch.common import Fetched
    from imgfetch.pipeline import Engine


class AsyncEngine:
    """One event loop, one aiohttp session: the default."""

    name = "async"

    def __init__(self, cfg: HttpConfig) -> None:
        self.max_in_flight = cfg.concurrency
        resolve = {host: (addr, port) for host, addr, port in cfg.resolve}
        self._client = AioClient(cfg, resolve)

    async def __aenter__(self) -> AsyncEngine:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(*exc)

    async def attempt(self, url: URL) -> Fetched:
        return await self._client.attempt(url)


ENGINES: dict[str, Callable[[HttpConfig], Engine]] = {
    "async": AsyncEngine,
}


def make_engine(name: str, cfg: HttpConfig) -> Engine:
    try:
        factory = ENGINES[name]
    except KeyError:
        raise EngineUnavailable(
            f"unknown engine {name!r}", hint=f"choose one of: {', '.join(sorted(ENGINES))}"
        ) from None
    return factory(cfg)
