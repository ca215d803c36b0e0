"""The benchmark's world: a real registry with N tags, and a Hub-like double before it.

Reuses the test fixtures unchanged: `tests.real.registry` starts Debian's
`docker-registry` on 127.0.0.1, `tests.real.images` pushes one small OCI index per
repository, and `tests.fakes.hub.HubDouble` adds bearer tokens, rate-limit headers,
a fixed latency and request counts. Imports nothing from watcher: the world is what
watcher is measured against.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from tests.fakes.hub import HubBehaviour, HubDouble, SeenRequest
from tests.real.images import OCI_INDEX, PushedImage, push_image
from tests.real.registry import RegistryServer, start_registry

#: Pushes in flight at once: docker-registry on two cores gains nothing past this.
PUSH_CONCURRENCY = 8
PUSH_TIMEOUT_SECONDS = 60.0
#: Priming the double's cache before a cold pass: HEADs to the registry at once, and
#: how long all of them may take.
PRIME_CONCURRENCY = 16
PRIME_TIMEOUT_SECONDS = 600.0
#: The double is Docker-Hub-like, but its pull budget must never run out mid-run:
#: a 429 would measure the budget, not watcher.
UNMETERED_PULLS = 1_000_000_000

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Layout:
    """Where tag number k lives: repository k // per_repository, tag k % per_repository."""

    tags: int
    per_repository: int

    def repository(self, number: int) -> str:
        return f"bench/r{number:04d}"

    def tag(self, number: int) -> str:
        return f"t{number:05d}"

    def watched(self, n: int) -> list[tuple[str, str]]:
        """The first `n` (repository, tag) pairs, repository by repository."""
        return [
            (
                self.repository(k // self.per_repository),
                self.tag(k % self.per_repository),
            )
            for k in range(n)
        ]

    def repositories(self, n: int) -> int:
        return -(-n // self.per_repository)


class TimedHub(HubDouble):
    """HubDouble that times a pass, counts connections and may cache manifests.

    The window times a pass from the registry's side, without the start-up of
    the process under test. With `cache_manifests`, a manifest answer of the
    registry is kept and served again for the same method, path and Accept, until
    `forget()` drops it: the double still counts, authorises, rate-limits and waits
    per request as before, but neither it nor the registry spends CPU on the
    repeated proxying, which on two cores would otherwise take the CPU watcher
    needs (see bench/README.md).
    """

    def __init__(
        self, upstream: str, behaviour: HubBehaviour, *, cache_manifests: bool
    ) -> None:
        super().__init__(upstream, behaviour)
        self.cache_manifests = cache_manifests
        self._window_lock = threading.Lock()
        self._first: float | None = None
        self._last: float | None = None
        self._client_ports: set[int] = set()
        self._cache: dict[tuple[str, str, str, str], Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def prime(self, paths: Sequence[str], accept: str) -> None:
        """Cache the registry's answer to a HEAD of each path, as the cold pass asks it.

        Without it the cold pass proxies every HEAD to docker-registry, whose CPU
        and the double's on the same two cores, not watcher's, would set the pace.
        The answers are the registry's own; nothing is counted or timed.
        """
        if not self.cache_manifests or self._loop is None:
            return

        primed = asyncio.run_coroutine_threadsafe(
            self._prime(paths, accept), self._loop
        )
        primed.result(timeout=PRIME_TIMEOUT_SECONDS)

    async def _prime(self, paths: Sequence[str], accept: str) -> None:
        slots = asyncio.Semaphore(PRIME_CONCURRENCY)

        async def one(path: str) -> None:
            async with slots:
                await self._forward(SeenRequest("HEAD", path, "", {"accept": accept}))

        await asyncio.gather(*(one(path) for path in paths))

    async def _serve(self, server: Any) -> None:
        self._loop = asyncio.get_running_loop()
        await super()._serve(server)

    def forget(self, paths: set[str]) -> None:
        """Drop the cached answers for these manifest paths (call after moving tags)."""
        self._cache = {
            key: value for key, value in self._cache.items() if key[1] not in paths
        }

    def reset_window(self) -> None:
        """Forget the window and the connections seen (call with reset_counts)."""
        with self._window_lock:
            self._first = None
            self._last = None
            self._client_ports.clear()

    @property
    def connections(self) -> int:
        """Distinct client connections (by source port) since `reset_window()`."""
        with self._window_lock:
            return len(self._client_ports)

    @property
    def window_seconds(self) -> float | None:
        """Seconds from the first request received to the last response sent."""
        with self._window_lock:
            if self._first is None or self._last is None:
                return None

            return self._last - self._first

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self._window_lock:
            if self._first is None:
                self._first = time.monotonic()

            client = scope.get("client")
            if client:
                self._client_ports.add(client[1])

        await super().__call__(scope, receive, send)
        with self._window_lock:
            self._last = time.monotonic()

    async def _forward(self, seen: SeenRequest) -> Any:
        # Overrides HubDouble._forward, which proxies one request to the registry;
        # its caller adds the rate-limit headers to the answer it gets, so each
        # request gets its own copy of a cached answer.
        if not self.cache_manifests or "/manifests/" not in seen.path:
            return await super()._forward(seen)

        key = (seen.method, seen.path, seen.query, seen.headers.get("accept", ""))
        cache = self._cache
        cached = cache.get(key)
        if cached is None:
            response = await super()._forward(seen)
            if response.status != httpx.codes.OK:
                return response

            cached = cache[key] = copy.copy(response)
            cached.headers = list(response.headers)

        answer = copy.copy(cached)
        answer.headers = list(cached.headers)
        return answer


@dataclass
class World:
    """The running registry and double, and what was pushed where."""

    layout: Layout
    registry: RegistryServer
    hub: TimedHub
    #: The digest each repository's tags first point at (one index per repository).
    seeded: dict[str, str]
    seed_seconds: float

    def move(self, targets: Sequence[tuple[str, str]], label: str) -> dict[str, str]:
        """Push a new index under each (repository, tag); return tag → new digest.

        Each target gets its own index (content derived from `label` and the tag),
        so every moved tag is a changed index.
        """

        def push(target: tuple[str, str]) -> PushedImage:
            repository, tag = target
            return push_image(
                self.registry.url,
                repository,
                tag,
                "oci-index",
                seed=f"{label}-{repository}-{tag}",
            )

        with ThreadPoolExecutor(PUSH_CONCURRENCY) as pool:
            pushed = list(pool.map(push, targets))

        self.hub.forget(
            {f"/v2/{repository}/manifests/{tag}" for repository, tag in targets}
        )
        return {f"{image.repository}:{image.tag}": image.digest for image in pushed}


@contextmanager
def running_world(
    layout: Layout, *, latency: float, token_ttl: int, cache_manifests: bool = True
) -> Iterator[World]:
    """Start the registry, push `layout.tags` tags, start the double; stop all after."""
    with start_registry() as registry:
        started = time.monotonic()
        seeded = _seed(registry.url, layout)
        seed_seconds = time.monotonic() - started
        behaviour = HubBehaviour(
            limit=UNMETERED_PULLS,
            remaining=UNMETERED_PULLS,
            latency=latency,
            token_ttl=token_ttl,
        )
        with TimedHub(registry.url, behaviour, cache_manifests=cache_manifests) as hub:
            yield World(layout, registry, hub, seeded, seed_seconds)


def _seed(base_url: str, layout: Layout) -> dict[str, str]:
    """Push one index per repository, then PUT its bytes under the other tags."""
    repositories = layout.repositories(layout.tags)

    def push(number: int) -> PushedImage:
        repository = layout.repository(number)
        return push_image(
            base_url, repository, layout.tag(0), "oci-index", seed=f"seed-{repository}"
        )

    with ThreadPoolExecutor(PUSH_CONCURRENCY) as pool:
        images = list(pool.map(push, range(repositories)))

    puts = [
        (image, layout.tag(k % layout.per_repository))
        for image in images
        for k in range(1, layout.per_repository)
    ]
    puts = [
        (image, tag)
        for image, tag in puts
        if _number(layout, image.repository, tag) < layout.tags
    ]
    asyncio.run(_put_all(base_url, puts))
    return {image.repository: image.digest for image in images}


def _number(layout: Layout, repository: str, tag: str) -> int:
    return int(repository.rsplit("r", 1)[1]) * layout.per_repository + int(tag[1:])


async def _put_all(base_url: str, puts: list[tuple[PushedImage, str]]) -> None:
    limits = httpx.Limits(
        max_connections=PUSH_CONCURRENCY, max_keepalive_connections=PUSH_CONCURRENCY
    )
    slots = asyncio.Semaphore(PUSH_CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=PUSH_TIMEOUT_SECONDS
    ) as client:

        async def put(image: PushedImage, tag: str) -> None:
            async with slots:
                response = await client.put(
                    f"/v2/{image.repository}/manifests/{tag}",
                    content=image.manifest,
                    headers={"Content-Type": OCI_INDEX},
                )

            if response.status_code != httpx.codes.CREATED:
                msg = f"PUT {response.request.url}: {response.status_code} {response.text[:300]}"
                raise RuntimeError(msg)

        await asyncio.gather(*(put(image, tag) for image, tag in puts))


def describe_counts(counts: Any) -> dict[str, int]:
    """The double's counts as a plain dict with every kind present."""
    kinds = (
        "token",
        "unauthorized",
        "head_manifest",
        "get_manifest",
        "rate_limited",
        "other",
        "token_denied",
    )
    return {kind: int(counts.get(kind, 0)) for kind in kinds}
