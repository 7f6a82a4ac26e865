"""A ``modft serve`` child process on 127.0.0.1: start it, wait until it serves, stop or kill it.

What the server's tests and ``make bench`` drive, and what a notebook can use to try the server
beside a kernel: the server runs as its own process (its own threads and memory), exactly as
``make serve`` starts it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from modft_utils.modeling import REPO_ROOT
from modft_utils.serve.engine import ServeError

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m modft_utils.serve <args> --port <port>`` as a child process.

    Args:
        args: the ``modft serve`` options (``--run``, ``--stack``, ...), without ``--port``.
        output: file the server's own log (stdout and stderr) goes to.
        port: the port to listen on (default: a free one).
        threads: torch threads of the server (``OMP_NUM_THREADS``). On a 2-core machine two torch
            processes with a thread per core each were measured up to 100x slower (their OpenMP
            threads spin-wait), so a server beside another torch process gets one.
        env: more environment variables (the hub is always offline).
    """

    def __init__(
        self,
        args: Sequence[str],
        output: str | os.PathLike,
        *,
        port: int | None = None,
        threads: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = list(args)
        self.output = Path(output)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **OFFLINE, **(env or {})}
        if threads:
            self.env["OMP_NUM_THREADS"] = str(threads)
        self.proc: subprocess.Popen | None = None
        self._out = None

    def start(self, timeout_s: float = 180.0) -> ServerProcess:
        """Start the process and wait until ``/ready`` answers 200 (ready or degraded).

        Raises ServeError with the end of the server's log when it exits or is not ready in time.
        """
        self._out = open(self.output, "a")  # noqa: SIM115 - closed by stop()/kill()
        cmd = [sys.executable, "-m", "modft_utils.serve", *self.args, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=self.env, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=5) as http:
            while True:
                if self.proc.poll() is not None:
                    raise ServeError(f"the server exited with {self.proc.returncode}: {self.log_tail()}")
                if time.monotonic() > deadline:
                    self.kill()
                    raise ServeError(f"the server was not ready within {timeout_s:g} s: {self.log_tail()}")
                try:
                    if http.get("/ready").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.2)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's own log."""
        try:
            return self.output.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (the server finishes and exits), SIGKILL after ``timeout_s``; returns the exit status."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self._closed()

    def kill(self) -> int | None:
        """SIGKILL: the process ends at once, as in a crash or an out-of-memory kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        return self._closed()

    def _closed(self) -> int | None:
        if self._out is not None:
            self._out.close()
            self._out = None
        return None if self.proc is None else self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
