"""The lead's note in issue #6: how the pool size of one `httpx.AsyncClient` matters.

Sends `requests` HEADs at once (all gathered together) straight to the registry,
with no latency added, through clients whose pools differ only in size; each
size three ways: httpx's own transport with the (empty) body read before
`aclose()` or not (httpcore reuses a connection only when its answer was read to
the end, so the two show connection reuse against a new connection per request),
and watcher's `Http11Transport` behind a semaphore of the pool's size, as
`RegistryClient` sends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from watcher.registry.transport import Http11Transport

POOL_TIMEOUT_SECONDS = 120.0
HTTPX_READ = "httpx, body read"
HTTPX_UNREAD = "httpx, body unread"
WATCHER = "watcher's Http11Transport"


@dataclass(frozen=True, slots=True)
class PoolRun:
    pool: int
    #: HTTPX_READ, HTTPX_UNREAD or WATCHER.
    how: str
    requests: int
    seconds: float
    failures: int


def measure_pools(
    base_url: str,
    targets: Sequence[tuple[str, str]],
    pools: Sequence[int],
    accept: str,
) -> list[PoolRun]:
    """Time one burst of HEADs, one per target, for each pool size and reading."""
    return [
        asyncio.run(_burst(base_url, targets, pool, accept, how))
        for pool in pools
        for how in (HTTPX_READ, HTTPX_UNREAD, WATCHER)
    ]


async def _burst(
    base_url: str,
    targets: Sequence[tuple[str, str]],
    pool: int,
    accept: str,
    how: str,
) -> PoolRun:
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    timeout = httpx.Timeout(POOL_TIMEOUT_SECONDS)
    ours = Http11Transport(verify=True, max_idle=pool) if how == WATCHER else None
    slots = asyncio.Semaphore(pool if how == WATCHER else len(targets))
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=timeout, transport=ours
    ) as client:

        async def head(repository: str, tag: str) -> bool:
            url = f"/v2/{repository}/manifests/{tag}"
            request = client.build_request("HEAD", url, headers={"Accept": accept})
            try:
                async with slots:
                    response = await client.send(request, stream=True)
                    if how != HTTPX_UNREAD:
                        await response.aread()

                    await response.aclose()
            except httpx.HTTPError:
                return False

            return response.status_code == httpx.codes.OK

        started = time.perf_counter()
        answers = await asyncio.gather(*(head(r, t) for r, t in targets))
        seconds = time.perf_counter() - started

    return PoolRun(pool, how, len(targets), seconds, answers.count(False))


def main(argv: list[str]) -> int:
    """`python -m bench.pools URL ACCEPT POOLS TARGETS_JSON`: print the runs as JSON.

    Run as its own process, so that the double, which runs in the harness process,
    shares neither an event loop nor the GIL with the bursts timed here.
    """
    if len(argv) != 4:
        sys.stderr.write("usage: python -m bench.pools URL ACCEPT POOLS TARGETS_JSON\n")
        return 2

    url, accept, pools, targets = argv
    runs = measure_pools(
        url,
        [(repository, tag) for repository, tag in json.loads(targets)],
        [int(pool) for pool in pools.split(",")],
        accept,
    )
    sys.stdout.write(json.dumps([dataclasses.asdict(run) for run in runs]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
