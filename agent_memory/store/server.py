"""Start and stop a local Chroma server (``chroma run``) for tests, benchmarks and demos.

Production users run their own server; this helper binds to 127.0.0.1 only.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from agent_memory.errors import StoreError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chroma_executable() -> str:
    beside = Path(sys.executable).parent / "chroma"
    found = str(beside) if beside.exists() else shutil.which("chroma")
    if not found:
        raise StoreError("the `chroma` command is not installed; run `pip install chromadb`")
    return found


class ChromaServer:
    """A ``chroma run`` child process on 127.0.0.1; use as a context manager.

    :meth:`kill` then :meth:`start` restarts it on the same port and data folder (the fault harness does).
    """

    def __init__(self, path: str | Path, port: int | None = None, startup_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ChromaServer":
        import httpx

        self.path.mkdir(parents=True, exist_ok=True)
        cmd = [chroma_executable(), "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StoreError(f"`chroma run` exited with code {self.process.returncode}; is port {self.port} free?")
            try:
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise StoreError(f"`chroma run` did not answer on {self.url} within {self.startup_timeout_s:.0f} s")

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (no shutdown); :meth:`start` brings it back on the same port and path."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "ChromaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
