"""JSON-RPC 2.0 client for the vhost-user-scsi management socket.

The daemon (``vhost-user-scsi serve --rpc-socket PATH``) speaks JSON-RPC 2.0
on a Unix stream socket: one JSON request in, one line of JSON out
(docs/management.md). :class:`RpcClient` opens a connection per call, so it
survives daemon restarts and can be shared between threads.

Errors:

* :class:`RpcError`: the daemon answered with a JSON-RPC error object
  (``code``, ``message``, ``data``); the codes are the ``*`` constants of
  this module (:data:`NOT_FOUND`, :data:`EXISTS`, ...).
* :class:`RpcConnectionError`: the socket cannot be reached, the connection
  broke, or (:class:`RpcTimeoutError`) no answer came in time.
* :class:`RpcProtocolError`: the answer is not a JSON-RPC 2.0 response to the
  request.
"""

import itertools
import json
import os
import socket
import threading
import time
from typing import Any, Dict, List, Mapping, Optional

__all__ = [
    "DEFAULT_RPC_SOCKET",
    "RPC_SOCKET_ENV",
    "PARSE_ERROR",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "INVALID_PARAMS",
    "INTERNAL_ERROR",
    "NOT_FOUND",
    "EXISTS",
    "BUSY",
    "FAILED",
    "SHUTTING_DOWN",
    "TOO_MANY_CONNECTIONS",
    "VhostUserScsiError",
    "RpcError",
    "RpcConnectionError",
    "RpcTimeoutError",
    "RpcProtocolError",
    "RpcClient",
    "default_rpc_socket",
]

#: The management socket of the packaged service.
DEFAULT_RPC_SOCKET = "/run/vhost-user-scsi/rpc.sock"
#: Environment variable naming the management socket (as ``vhost-user-scsi
#: ctl`` reads it).
RPC_SOCKET_ENV = "VHOST_USER_SCSI_RPC"

# JSON-RPC 2.0 error codes, and the daemon's own (src/mgmt/api.rs).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: No such controller or LUN.
NOT_FOUND = -32001
#: Name, socket or LUN number already taken, or a shared disk attached
#: differently.
EXISTS = -32002
#: ``controller_delete`` of a connected controller without ``force``.
BUSY = -32003
#: The backing store or socket cannot be used, or the state file cannot be
#: written.
FAILED = -32004
#: The daemon is shutting down.
SHUTTING_DOWN = -32005
#: Too many connections to the management socket.
TOO_MANY_CONNECTIONS = -32099

# Largest answer accepted (a controller_list of thousands of LUNs is far
# below this).
_MAX_RESPONSE = 64 << 20


def default_rpc_socket() -> str:
    """The management socket: ``$VHOST_USER_SCSI_RPC`` or the default."""
    return os.environ.get(RPC_SOCKET_ENV) or DEFAULT_RPC_SOCKET


class VhostUserScsiError(Exception):
    """Base class of every error raised by this package."""


class RpcError(VhostUserScsiError):
    """The daemon answered with a JSON-RPC error object.

    ``str(error)`` is the daemon's message; ``code`` is the JSON-RPC error
    code (compare with :data:`NOT_FOUND`, :data:`EXISTS`, ...), ``data`` the
    optional ``data`` member (``None`` when absent) and ``method`` the method
    called.
    """

    def __init__(
        self,
        code: int,
        message: str,
        data: Any = None,
        method: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.method = method

    def __repr__(self) -> str:
        return "RpcError(code=%d, message=%r, data=%r, method=%r)" % (
            self.code,
            self.message,
            self.data,
            self.method,
        )


class RpcConnectionError(VhostUserScsiError):
    """The management socket cannot be reached, or the connection broke
    before the answer was complete. The call may or may not have been
    carried out when the connection broke after the request was sent."""


class RpcTimeoutError(RpcConnectionError):
    """No complete answer within the client's timeout."""


class RpcProtocolError(VhostUserScsiError):
    """The answer is not a JSON-RPC 2.0 response to the request."""


class RpcClient:
    """A JSON-RPC 2.0 client for the daemon's ``--rpc-socket``.

    Each call connects, sends one request (ids increment from 1 per
    client), reads the one-line answer and closes the connection.
    ``timeout`` (seconds) bounds the whole call: connect, send and receive.
    Thread-safe.
    """

    def __init__(self, path: Optional[str] = None, timeout: float = 30.0) -> None:
        self.path = os.fspath(path) if path is not None else default_rpc_socket()
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "RpcClient(%r, timeout=%r)" % (self.path, self.timeout)

    def _next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def call(self, method: str, params: Optional[Mapping[str, Any]] = None) -> Any:
        """Call ``method`` with by-name ``params`` and return its ``result``.

        Raises :class:`RpcError` for an error answer,
        :class:`RpcConnectionError` (:class:`RpcTimeoutError`) when the
        daemon cannot be reached or does not answer in time, and
        :class:`RpcProtocolError` for an answer that is not a response to
        this request.
        """
        request_id = self._next_id()
        request: Dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            request["params"] = dict(params)
        line = self._exchange(json.dumps(request).encode() + b"\n", method)
        try:
            response = json.loads(line)
        except ValueError as e:
            raise RpcProtocolError(
                "%s: the answer is not JSON: %s: %r" % (method, e, line[:200])
            ) from None
        if not isinstance(response, dict) or response.get("jsonrpc") != "2.0":
            raise RpcProtocolError("%s: not a JSON-RPC 2.0 response: %r" % (method, line[:200]))
        # An error about a request the daemon could not read (too large)
        # has a null id.
        if response.get("id") != request_id and not (
            response.get("id") is None and "error" in response
        ):
            raise RpcProtocolError(
                "%s: answer to request id %r, expected %d"
                % (method, response.get("id"), request_id)
            )
        if "error" in response:
            error = response["error"]
            if not isinstance(error, dict) or not isinstance(error.get("code"), int):
                raise RpcProtocolError("%s: malformed error object: %r" % (method, error))
            raise RpcError(error["code"], str(error.get("message", "")), error.get("data"), method)
        if "result" not in response:
            raise RpcProtocolError("%s: response has neither result nor error" % method)
        return response["result"]

    def _exchange(self, data: bytes, method: str) -> bytes:
        """Send ``data`` and return the first line of the answer (without
        the newline)."""
        deadline = time.monotonic() + self.timeout

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            return left

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.settimeout(remaining())
                sock.connect(self.path)
                sock.settimeout(remaining())
                try:
                    sock.sendall(data)
                except (BrokenPipeError, ConnectionResetError):
                    # The daemon refused the request before reading all of
                    # it (too large) and closed: its answer says why.
                    pass
                buf = bytearray()
                while True:
                    sock.settimeout(remaining())
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise RpcConnectionError(
                            "%s: %s closed the connection before answering" % (method, self.path)
                        )
                    end = chunk.find(b"\n")
                    if end >= 0:
                        buf += chunk[:end]
                        return bytes(buf)
                    buf += chunk
                    if len(buf) > _MAX_RESPONSE:
                        raise RpcProtocolError(
                            "%s: answer larger than %d bytes" % (method, _MAX_RESPONSE)
                        )
            except socket.timeout:
                raise RpcTimeoutError(
                    "%s: no answer from %s within %gs" % (method, self.path, self.timeout)
                ) from None
            except OSError as e:
                raise RpcConnectionError(
                    "%s: cannot talk to the vhost-user-scsi daemon at %s: %s"
                    % (method, self.path, e.strerror or e)
                ) from e
        finally:
            sock.close()

    # The daemon's methods (docs/management.md). Optional parameters left
    # as None are not sent, so the daemon's defaults apply.

    def controller_create(
        self,
        name: str,
        socket: str,
        num_queues: Optional[int] = None,
        queue_size: Optional[int] = None,
        initiator: Optional[str] = None,
        socket_group: Optional[str] = None,
        socket_mode: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Create a controller listening on the vhost-user ``socket``;
        returns the controller (as ``controller_list`` shows it).
        ``socket_group``/``socket_mode`` need a daemon that has them."""
        return self.call(
            "controller_create",
            _params(
                name=name,
                socket=os.fspath(socket),
                num_queues=num_queues,
                queue_size=queue_size,
                initiator=initiator,
                socket_group=socket_group,
                socket_mode=socket_mode,
            ),
        )

    def controller_delete(self, name: str, force: bool = False) -> None:
        """Delete a controller; ``force`` disconnects a connected guest."""
        self.call("controller_delete", _params(name=name, force=force or None))

    def controller_list(self) -> List[Dict[str, Any]]:
        """Every controller with its LUNs."""
        return self.call("controller_list")

    def lun_add(
        self,
        controller: str,
        path: str,
        lun: Optional[int] = None,
        readonly: bool = False,
        block_size: Optional[int] = None,
        serial: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Add an image file or block device as a LUN; returns the LUN."""
        return self.call(
            "lun_add",
            _params(
                controller=controller,
                path=os.fspath(path),
                lun=lun,
                readonly=readonly or None,
                block_size=block_size,
                serial=serial,
            ),
        )

    def lun_remove(self, controller: str, lun: int) -> None:
        """Remove a LUN (the guest is told the disk went away)."""
        self.call("lun_remove", {"controller": controller, "lun": lun})

    def lun_resize(self, controller: str, lun: int, size: Optional[int] = None) -> Dict[str, Any]:
        """Grow an image file to ``size`` bytes, or re-read the backing's
        size; returns the LUN."""
        return self.call("lun_resize", _params(controller=controller, lun=lun, size=size))

    def stats(self, controller: Optional[str] = None, lun: Optional[int] = None) -> Dict[str, Any]:
        """Counters of every controller, or of one controller (and LUN)."""
        return self.call("stats", _params(controller=controller, lun=lun))

    def version(self) -> Dict[str, str]:
        """``{"name": "vhost-user-scsi", "version": ...}``."""
        return self.call("version")


def _params(**kwargs: Any) -> Dict[str, Any]:
    """The parameters that are not None."""
    return {k: v for k, v in kwargs.items() if v is not None}
