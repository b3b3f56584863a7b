"""The CPU pool: real worker processes, a worker killed mid-item, a pool that cannot start."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest

from imgfetch.workers import CpuPool, PoolBroken, WorkerCrashed


def echo(data: bytes, arg: Any) -> tuple[bytes, Any, int]:
    """Module level, so the forkserver workers can import it."""
    if data == b"die":
        os.kill(os.getpid(), signal.SIGKILL)
    if data == b"raise":
        raise ValueError("bad item")
    return data[::-1], arg, os.getpid()


def always_die(data: bytes, arg: Any) -> None:
    os._exit(3)


def test_results_come_back_in_the_right_futures() -> None:
    async def main() -> list[tuple[bytes, Any, int]]:
        async with CpuPool(echo, {"k": 1}, 2) as pool:
            return await asyncio.gather(*(pool.run(f"item-{i}".encode() * 5000) for i in range(50)))

    results = asyncio.run(main())
    assert [r[0] for r in results] == [(f"item-{i}".encode() * 5000)[::-1] for i in range(50)]
    assert all(r[1] == {"k": 1} for r in results)
    assert len({r[2] for r in results}) == 2  # both workers took items
    assert os.getpid() not in {r[2] for r in results}


def test_large_payloads() -> None:
    big = os.urandom(5 * 1024 * 1024)

    async def main() -> bytes:
        async with CpuPool(echo, None, 1) as pool:
            return (await pool.run(big))[0]

    assert asyncio.run(main()) == big[::-1]


def test_an_exception_in_the_function_fails_only_its_item() -> None:
    async def main() -> list[Any]:
        async with CpuPool(echo, None, 1) as pool:
            got: list[Any] = await asyncio.gather(
                pool.run(b"ab"), pool.run(b"raise"), pool.run(b"cd"), return_exceptions=True
            )
            return got

    ok1, bad, ok2 = asyncio.run(main())
    assert ok1[0] == b"ba" and ok2[0] == b"dc"
    assert isinstance(bad, RuntimeError) and "ValueError: bad item" in str(bad)


def test_a_killed_worker_fails_its_item_and_is_replaced() -> None:
    async def main() -> tuple[list[Any], list[Any]]:
        async with CpuPool(echo, None, 1) as pool:
            # One worker: "die" is being processed, the next item waits queued behind it.
            first = await asyncio.gather(pool.run(b"die"), pool.run(b"xy"), return_exceptions=True)
            later = await asyncio.gather(*(pool.run(b"%d" % i) for i in range(5)))
            return list(first), list(later)

    first, later = asyncio.run(main())
    assert isinstance(first[0], WorkerCrashed) and "signal 9" in str(first[0])
    assert first[1][0] == b"yx"  # resent to the new worker
    assert [r[0] for r in later] == [(b"%d" % i)[::-1] for i in range(5)]


def test_a_pool_whose_workers_always_die_gives_up() -> None:
    async def main() -> list[Any]:
        async with CpuPool(always_die, None, 1) as pool:
            return await asyncio.gather(*(pool.run(b"x") for _ in range(30)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, (WorkerCrashed, PoolBroken)) for r in results)
    assert any(isinstance(r, PoolBroken) for r in results)


def test_close_with_items_in_flight_does_not_hang() -> None:
    async def main() -> None:
        pool = await CpuPool(echo, None, 2).__aenter__()
        tasks = [asyncio.create_task(pool.run(b"z" * 100_000)) for _ in range(20)]
        await asyncio.sleep(0)
        await pool.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("workers", [1, 3])
def test_workers_are_gone_after_close(workers: int) -> None:
    async def main() -> list[int]:
        async with CpuPool(echo, None, workers) as pool:
            results = await asyncio.gather(*(pool.run(b"a") for _ in range(workers * 4)))
            return sorted({r[2] for r in results})

    for pid in asyncio.run(main()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_decode_worker_does_not_import_the_http_stack() -> None:
    """A worker imports imgfetch.images and imgfetch.workers only: no aiohttp, no pipeline (~0.3 s each)."""
    code = (
        "import sys, imgfetch.images, imgfetch.workers;"
        " print(sorted(m for m in ('aiohttp', 'imgfetch.pipeline') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # ... while the package's public API still works as before.
    code = "import imgfetch as i; print(callable(i.download), callable(i.stream), callable(i.config))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True True True"


def test_recv_exact_reads_a_message_sent_in_pieces_and_sees_a_cut_stream() -> None:
    import threading
    import time

    from imgfetch.workers import _recv_exact, socket_pair

    payload = os.urandom(300_000)
    a, b = socket_pair()
    with a, b:

        def send() -> None:
            for i in range(0, len(payload), 70_000):
                a.sendall(payload[i : i + 70_000])
                time.sleep(0.01)
            a.sendall(b"tail")
            a.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        assert _recv_exact(b, len(payload)) == payload
        assert _recv_exact(b, 0) == b""
        assert _recv_exact(b, 10) is None  # 4 bytes, then the end of the stream
        sender.join()
