"""`python -m bench.http`: client CPU per HEAD, httpx's default transport vs ours.

Starts a loopback HTTP/1.1 server in a subprocess of its own (so its CPU is not
counted), then, for each transport and concurrency C, sends warm-up HEADs and
then `--requests` HEADs through one `httpx.AsyncClient` whose pool holds C
connections, at most C at a time (as `RegistryClient`'s semaphore holds them),
each read to its end and closed as `RegistryClient._send` does. Prints the
client's CPU milliseconds per HEAD (`time.process_time`) and HEADs per second.

Bounded: each run stops after `RUN_TIMEOUT_SECONDS`, and the server is killed by
the PID this process started, and exits by itself when this process's end closes
its stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from watcher.registry.media_types import MANIFEST_ACCEPT
from watcher.registry.transport import Http11Transport

LOOPBACK = "127.0.0.1"
DEFAULT_REQUESTS = 3000
DEFAULT_CONCURRENCY = (1, 8, 32)
WARM_UP_REQUESTS = 200
RUN_TIMEOUT_SECONDS = 120.0
SERVER_START_SECONDS = 10.0
SERVER_STOP_SECONDS = 5.0

#: What a registry answers to a manifest HEAD, Docker Hub's rate-limit headers
#: included: the headers httpx parses on every answer.
ANSWER = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/vnd.oci.image.index.v1+json\r\n"
    b"Docker-Content-Digest: sha256:" + b"a" * 64 + b"\r\n"
    b"Content-Length: 1610\r\n"
    b"ratelimit-limit: 100;w=21600\r\n"
    b"ratelimit-remaining: 99;w=21600\r\n"
    b"\r\n"
)

ClientFactory = Callable[[int], httpx.AsyncClient]


@dataclass(frozen=True, slots=True)
class Run:
    transport: str
    concurrency: int
    requests: int
    cpu_seconds: float
    wall_seconds: float

    @property
    def cpu_ms_per_head(self) -> float:
        return 1000 * self.cpu_seconds / self.requests

    @property
    def heads_per_second(self) -> float:
        return self.requests / self.wall_seconds


#: The tables printed: a title, and how a run shows in it.
FIGURES: tuple[tuple[str, Callable[[Run], str]], ...] = (
    ("client CPU ms per HEAD", lambda run: f"{run.cpu_ms_per_head:.3f}"),
    ("HEADs per second (wall)", lambda run: f"{run.heads_per_second:.0f}"),
)


def default_client(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency
    )
    return httpx.AsyncClient(limits=limits, timeout=30.0)


def our_client(concurrency: int) -> httpx.AsyncClient:
    transport = Http11Transport(True, max_idle=concurrency)
    return httpx.AsyncClient(transport=transport, timeout=30.0)


TRANSPORTS: dict[str, ClientFactory] = {
    "httpx default": default_client,
    "Http11Transport": our_client,
}


async def measure(name: str, url: str, concurrency: int, requests: int) -> Run:
    """One run: warm-up HEADs, then ``requests`` timed HEADs at ``concurrency``."""
    async with TRANSPORTS[name](concurrency) as client:
        slots = asyncio.Semaphore(concurrency)

        async def head() -> None:
            async with slots:
                request = client.build_request(
                    "HEAD", url, headers={"Accept": MANIFEST_ACCEPT}
                )
                response = await client.send(request, stream=True)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                response.raise_for_status()

        async with asyncio.timeout(RUN_TIMEOUT_SECONDS):
            await asyncio.gather(*(head() for _ in range(WARM_UP_REQUESTS)))
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(head() for _ in range(requests)))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall

    return Run(name, concurrency, requests, cpu, wall)


def table(runs: Sequence[Run], concurrency: Sequence[int]) -> str:
    """The runs as two small tables: CPU ms per HEAD, and HEADs per second."""
    by_key = {(run.transport, run.concurrency): run for run in runs}
    header = f"{'':<18}" + "".join(f"{f'C={c}':>9}" for c in concurrency)
    lines = []
    for title, value in FIGURES:
        lines += [title, header]
        for name in TRANSPORTS:
            cells = "".join(f"{value(by_key[name, c]):>9}" for c in concurrency)
            lines.append(f"{name:<18}{cells}")
        lines.append("")

    return "\n".join(lines)


def start_server() -> tuple[subprocess.Popen[bytes], int]:
    """The answering server in a subprocess, and the port it listens on."""
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.http", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    out = server.stdout
    ready = out is not None and select.select([out], [], [], SERVER_START_SECONDS)[0]
    line = out.readline() if out is not None and ready else b""
    if not line.strip().isdigit():
        stop_server(server)
        msg = f"the bench server gave no port within {SERVER_START_SECONDS} s"
        raise RuntimeError(msg)

    return server, int(line)


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """Kill the server this process started, by its PID, and reap it."""
    if server.poll() is None:
        server.kill()
    server.wait(timeout=SERVER_STOP_SECONDS)


async def serve() -> None:
    """Answer every request with ``ANSWER`` until stdin closes (the parent ended)."""
    server = await asyncio.start_server(_answer, LOOPBACK, 0)
    sys.stdout.write(f"{server.sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    parent = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(parent), sys.stdin
    )
    await parent.read()
    server.close()


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ANSWER)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass
    finally:
        writer.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__)
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    parser.add_argument(
        "--concurrency",
        default=",".join(map(str, DEFAULT_CONCURRENCY)),
        help="comma-separated concurrencies (pool sizes); default %(default)s",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve())
        return 0

    concurrency = [int(c) for c in args.concurrency.split(",")]
    server, port = start_server()
    try:
        url = f"http://{LOOPBACK}:{port}/v2/library/nginx/manifests/latest"
        runs = [
            asyncio.run(measure(name, url, c, args.requests))
            for c in concurrency
            for name in TRANSPORTS
        ]
    finally:
        stop_server(server)

    sniffio = importlib.util.find_spec("sniffio") is not None
    sys.stdout.write(
        f"{args.requests} HEADs per cell after {WARM_UP_REQUESTS} warm-up; "
        f"httpx {httpx.__version__}, sniffio {'installed' if sniffio else 'absent'}\n\n"
        + table(runs, concurrency)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
