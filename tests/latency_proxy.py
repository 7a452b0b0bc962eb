"""A TCP proxy on loopback that adds pure latency: each chunk the server sends reaches
the client ``delay_ms`` after it came (chunks are not held behind each other's delay),
so every request/reply round trip through it takes ``delay_ms`` longer, as a database
or Redis on a slow or distant link would. Client-to-server bytes pass at once.

Run as a process of its own (``python -m tests.latency_proxy LISTEN TARGET DELAY_MS``),
so the test's own load does not delay it: :class:`LatencyProxy` starts and stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.servers import die_with_tests, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LatencyProxy:
    """``python -m tests.latency_proxy`` in front of ``127.0.0.1:target_port``."""

    target_port: int
    delay_ms: int
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LatencyProxy:
        argv = [sys.executable, "-m", "tests.latency_proxy"]
        argv += [str(self.port), str(self.target_port), str(self.delay_ms)]
        self.proc = subprocess.Popen(argv, cwd=ROOT, preexec_fn=die_with_tests())
        wait_until(self._listening, 10, "the latency proxy")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)

    def url_through(self, url: str) -> str:
        """``url`` (its host 127.0.0.1:``target_port``) pointed at the proxy instead."""
        parts = urlsplit(url)
        netloc = parts.netloc.replace(f":{self.target_port}", f":{self.port}")
        assert netloc != parts.netloc, url
        return urlunsplit(parts._replace(netloc=netloc))

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(65536):
            if delay_s:
                loop.call_later(delay_s, writer.write, data)
            else:
                writer.write(data)
    except OSError:
        pass
    finally:
        await asyncio.sleep(delay_s)  # the delayed chunks go out before the close
        writer.close()


async def _serve(listen_port: int, target_port: int, delay_s: float) -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_w.close()
            return
        for task in (_pipe(client_r, server_w, 0.0), _pipe(server_r, client_w, delay_s)):
            tasks.add(asyncio.create_task(task))
        tasks.difference_update([task for task in tasks if task.done()])

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    listen, target, delay_ms = (int(value) for value in sys.argv[1:4])
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(_serve(listen, target, delay_ms / 1000))
