"""Python client for the vhost-user-scsi daemon's management socket.

:mod:`vhost_user_scsi.rpc` is the JSON-RPC 2.0 client;
:mod:`vhost_user_scsi.executor` creates, lists and deletes endpoints (one
controller per guest, volumes as LUNs) and writes the libvirt XML that
attaches them. Standard library only.
"""

from .executor import (
    DEFAULT_NUM_QUEUES,
    DEFAULT_PCI_ADDR,
    DEFAULT_PCI_BUS,
    DEFAULT_RECONNECT_MS,
    DEFAULT_SOCKET_DIR,
    MEMORY_BACKING_XML,
    QEMU_XML_NAMESPACE,
    Endpoint,
    Lun,
    VhostUserScsiExecutor,
)
from .rpc import (
    BUSY,
    DEFAULT_RPC_SOCKET,
    EXISTS,
    FAILED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NOT_FOUND,
    PARSE_ERROR,
    RPC_SOCKET_ENV,
    SHUTTING_DOWN,
    TOO_MANY_CONNECTIONS,
    RpcClient,
    RpcConnectionError,
    RpcError,
    RpcProtocolError,
    RpcTimeoutError,
    VhostUserScsiError,
    default_rpc_socket,
)

__version__ = "0.1.0"

__all__ = [
    "BUSY",
    "DEFAULT_NUM_QUEUES",
    "DEFAULT_PCI_ADDR",
    "DEFAULT_PCI_BUS",
    "DEFAULT_RECONNECT_MS",
    "DEFAULT_RPC_SOCKET",
    "DEFAULT_SOCKET_DIR",
    "EXISTS",
    "FAILED",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "MEMORY_BACKING_XML",
    "METHOD_NOT_FOUND",
    "NOT_FOUND",
    "PARSE_ERROR",
    "QEMU_XML_NAMESPACE",
    "RPC_SOCKET_ENV",
    "SHUTTING_DOWN",
    "TOO_MANY_CONNECTIONS",
    "Endpoint",
    "Lun",
    "RpcClient",
    "RpcConnectionError",
    "RpcError",
    "RpcProtocolError",
    "RpcTimeoutError",
    "VhostUserScsiError",
    "VhostUserScsiExecutor",
    "default_rpc_socket",
]
