"""Fixtures: the real daemon (``target/debug/vhost-user-scsi`` or
``$VUS_BINARY``) serving ``--rpc-socket`` in a temporary directory, and a
fake JSON-RPC server for what a real daemon does not do (hang, answer
garbage)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

PYTHON_DIR = Path(__file__).resolve().parent.parent
REPO = PYTHON_DIR.parent
# Run from the source tree, without pip install.
sys.path.insert(0, str(PYTHON_DIR))

from vhost_user_scsi import RpcClient, VhostUserScsiExecutor  # noqa: E402


def daemon_binary() -> Path:
    path = Path(os.environ.get("VUS_BINARY") or REPO / "target" / "debug" / "vhost-user-scsi")
    if not os.access(path, os.X_OK):
        pytest.fail("%s is missing: run `cargo build` (or set VUS_BINARY)" % path)
    return path


class Daemon:
    """``vhost-user-scsi serve --rpc-socket DIR/rpc.sock [args]``, stderr in
    DIR/daemon-N.log."""

    starts = 0

    def __init__(self, workdir: Path, args: List[str] = ()) -> None:
        Daemon.starts += 1
        self.workdir = workdir
        self.rpc_socket = str(workdir / "rpc.sock")
        self.log_path = workdir / ("daemon-%d.log" % Daemon.starts)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(daemon_binary()), "serve", "--rpc-socket", self.rpc_socket, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        client = RpcClient(self.rpc_socket, timeout=2.0)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                pytest.fail("daemon exited with %s:\n%s" % (self.proc.returncode, self.log()))
            if os.path.exists(self.rpc_socket):
                try:
                    client.version()
                    break
                except Exception:
                    pass
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail("daemon not answering on %s:\n%s" % (self.rpc_socket, self.log()))
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM; the exit code (the daemon exits 0 on SIGTERM)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short temporary directory (socket paths are limited to 107
    bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vus-py-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(workdir: Path) -> Iterator[Daemon]:
    d = Daemon(workdir)
    try:
        yield d
    finally:
        code = d.stop()
        assert code == 0, "daemon exit code %s:\n%s" % (code, d.log())


@pytest.fixture
def executor(daemon: Daemon, workdir: Path) -> VhostUserScsiExecutor:
    return VhostUserScsiExecutor(daemon.rpc_socket, timeout=10.0, socket_dir=str(workdir / "s"))


@pytest.fixture
def image(workdir: Path) -> Callable[..., str]:
    """``image(name, size=64 MiB)``: a sparse image file."""

    def make(name: str = "disk.img", size: int = 64 << 20) -> str:
        path = workdir / name
        with open(path, "wb") as f:
            f.truncate(size)
        return str(path)

    return make


class FakeServer:
    """A Unix socket server answering each request line with
    ``handler(request)``: a dict (sent as JSON), bytes (sent as they are),
    or None (no answer: the connection is held open until the server
    stops). Records every request."""

    def __init__(self, path: str, handler: Callable[[dict], object]) -> None:
        self.path = path
        self.handler = handler
        self.requests: List[dict] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.stopping = threading.Event()
        self.held: List[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn.makefile("rb") as f:
                line = f.readline()
            if not line:
                conn.close()
                continue
            request = json.loads(line)
            self.requests.append(request)
            answer = self.handler(request)
            if answer is None:
                self.held.append(conn)
                continue
            if isinstance(answer, dict):
                answer = json.dumps(answer).encode() + b"\n"
            conn.sendall(answer)
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.held:
            conn.close()
        self.thread.join(5)


@pytest.fixture
def fake_server(workdir: Path) -> Iterator[Callable[[Callable[[dict], object]], FakeServer]]:
    """``fake_server(handler)``: a :class:`FakeServer` on
    ``workdir/fake.sock``."""
    servers: List[FakeServer] = []

    def start(handler: Callable[[dict], object], name: Optional[str] = None) -> FakeServer:
        server = FakeServer(str(workdir / (name or "fake%d.sock" % len(servers))), handler)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
