"""Endpoint executor: one vhost-user-scsi controller per guest, volumes as
its LUNs, and the libvirt XML that attaches it.

In the spirit of os-brick's connectors and Cinder's vHost executor: an
*endpoint* is what a hypervisor connects to, here a controller of the
vhost-user-scsi daemon (one vhost-user socket, one
``-device vhost-user-scsi-pci`` in one QEMU) with the volume as a LUN::

    executor = VhostUserScsiExecutor("/run/vhost-user-scsi/rpc.sock")
    ep = executor.create_endpoint("/dev/vg0/volume-1", name=instance_uuid,
                                  bootindex=0, socket_group="kvm")
    domain_xml = ... ep.memory_backing_xml ... ep.libvirt_xml ...
    executor.add_lun(ep.name, "/dev/vg0/volume-2", lun=1)   # hot attach
    executor.remove_lun(ep.name, 1)                        # hot detach
    executor.delete_endpoint(ep.name)                      # after QEMU quit
"""

import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple
from xml.sax.saxutils import quoteattr

from .rpc import NOT_FOUND, RpcClient, RpcError, VhostUserScsiError

__all__ = [
    "DEFAULT_SOCKET_DIR",
    "DEFAULT_NUM_QUEUES",
    "DEFAULT_PCI_BUS",
    "DEFAULT_PCI_ADDR",
    "DEFAULT_RECONNECT_MS",
    "QEMU_XML_NAMESPACE",
    "MEMORY_BACKING_XML",
    "Lun",
    "Endpoint",
    "VhostUserScsiExecutor",
]

LOG = logging.getLogger(__name__)

#: Where the vhost-user sockets of endpoints go by default (the packaged
#: service's runtime directory).
DEFAULT_SOCKET_DIR = "/run/vhost-user-scsi"
#: Request queues of a new controller (the daemon's default).
DEFAULT_NUM_QUEUES = 4
#: PCI bus and slot of the ``vhost-user-scsi-pci`` device: the q35 root bus
#: and a slot libvirt does not hand out by itself in small domains. A
#: ``-device`` from ``<qemu:commandline>`` without an address would take
#: the first free slot before libvirt's own devices are placed.
DEFAULT_PCI_BUS = "pcie.0"
DEFAULT_PCI_ADDR = "0x10"
#: QEMU reconnects to the socket this long after the daemon went away
#: (``reconnect-ms``, QEMU >= 9.2): a daemon restart is a pause of the guest's
#: disk I/O, not a lost disk.
DEFAULT_RECONNECT_MS = 1000

#: The XML namespace of libvirt's ``<qemu:commandline>``.
QEMU_XML_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"

#: The ``<memoryBacking>`` a domain needs for any vhost-user device: guest
#: RAM in a memfd shared with the daemon.
MEMORY_BACKING_XML = (
    "<memoryBacking>\n"
    '  <source type="memfd"/>\n'
    '  <access mode="shared"/>\n'
    "</memoryBacking>"
)


@dataclass(frozen=True)
class Lun:
    """A volume served as a LUN of an endpoint."""

    #: LUN number (0..16383) the guest sees.
    lun: int
    #: Image file or block device.
    path: str
    readonly: bool = False
    #: Logical block size in bytes.
    block_size: int = 512
    #: Capacity in bytes.
    size: int = 0
    #: Unit serial number (SCSI VPD page 80h).
    serial: str = ""

    @classmethod
    def from_api(cls, info: Mapping[str, Any]) -> "Lun":
        """From a LUN as the daemon returns it (``lun_add``,
        ``controller_list``)."""
        return cls(
            lun=int(info["lun"]),
            path=str(info["path"]),
            readonly=bool(info.get("readonly", False)),
            block_size=int(info.get("block_size", 512)),
            size=int(info.get("size", 0)),
            serial=str(info.get("serial", "")),
        )


@dataclass(frozen=True)
class Endpoint:
    """A controller of the daemon: the vhost-user socket one QEMU connects
    to, and its LUNs.

    ``libvirt_xml`` is the ``<qemu:commandline>`` fragment that attaches it
    to a libvirt domain, which also needs ``memory_backing_xml``. The PCI
    placement and boot order are ``pci_bus``, ``pci_addr`` and
    ``bootindex``; :meth:`qemu_commandline_xml` and :meth:`qemu_args` take
    others.
    """

    #: Controller name (unique in the daemon).
    name: str
    #: vhost-user socket path.
    socket: str
    #: Request queues of the controller (QEMU's ``num_queues`` must not be
    #: larger).
    num_queues: int = DEFAULT_NUM_QUEUES
    luns: Tuple[Lun, ...] = ()
    #: A QEMU is connected to the socket.
    connected: bool = False
    #: ``listening``, ``connected``, ``retrying`` or ``stopped``.
    state: str = ""
    #: The initiator identity given at creation, if any.
    initiator: Optional[str] = None
    #: The socket's group and mode (octal), when the daemon set them.
    socket_group: Optional[str] = None
    socket_mode: Optional[str] = None
    pci_bus: str = DEFAULT_PCI_BUS
    pci_addr: str = DEFAULT_PCI_ADDR
    #: Boot order of the device (0 for boot from volume); None: not
    #: bootable.
    bootindex: Optional[int] = None
    #: QEMU's chardev ``reconnect-ms``; None leaves it out.
    reconnect_ms: Optional[int] = DEFAULT_RECONNECT_MS

    @classmethod
    def from_api(cls, info: Mapping[str, Any], **kwargs: Any) -> "Endpoint":
        """From a controller as the daemon returns it (``controller_create``,
        ``controller_list``); ``kwargs`` set the XML fields."""
        return cls(
            name=str(info["name"]),
            socket=str(info["socket"]),
            num_queues=int(info.get("num_queues", DEFAULT_NUM_QUEUES)),
            luns=tuple(Lun.from_api(lun) for lun in info.get("luns", ())),
            connected=bool(info.get("connected", False)),
            state=str(info.get("state", "")),
            initiator=info.get("initiator"),
            socket_group=info.get("socket_group"),
            socket_mode=info.get("socket_mode"),
            **kwargs,
        )

    @property
    def lun(self) -> Optional[int]:
        """The first LUN's number (the volume of an endpoint made by
        :meth:`VhostUserScsiExecutor.create_endpoint`), None without LUNs."""
        return self.luns[0].lun if self.luns else None

    @property
    def device_id(self) -> str:
        """QEMU id of the ``vhost-user-scsi-pci`` device."""
        return "vus-" + self.name

    @property
    def chardev_id(self) -> str:
        """QEMU id of the socket chardev."""
        return "vus-" + self.name + "-chr"

    def qemu_args(
        self,
        *,
        bus: Optional[str] = None,
        addr: Optional[str] = None,
        bootindex: Optional[int] = None,
        num_queues: Optional[int] = None,
    ) -> List[str]:
        """The QEMU arguments that attach the endpoint: ``-chardev`` and
        ``-device``. ``bus``, ``addr`` and ``bootindex`` default to the
        endpoint's; ``num_queues`` (QEMU's) to the controller's. ``bus=""``
        leaves bus and address out."""
        bus = self.pci_bus if bus is None else bus
        addr = self.pci_addr if addr is None else addr
        bootindex = self.bootindex if bootindex is None else bootindex
        num_queues = self.num_queues if num_queues is None else num_queues
        chardev = "socket,id=%s,path=%s" % (self.chardev_id, _qemu_opt(self.socket))
        if self.reconnect_ms is not None:
            chardev += ",reconnect-ms=%d" % self.reconnect_ms
        device = "vhost-user-scsi-pci,id=%s,chardev=%s,num_queues=%d" % (
            self.device_id,
            self.chardev_id,
            num_queues,
        )
        if bus:
            device += ",bus=" + _qemu_opt(bus)
            if addr:
                device += ",addr=" + _qemu_opt(addr)
        if bootindex is not None:
            device += ",bootindex=%d" % bootindex
        return ["-chardev", chardev, "-device", device]

    def qemu_commandline_xml(
        self,
        *,
        bus: Optional[str] = None,
        addr: Optional[str] = None,
        bootindex: Optional[int] = None,
        num_queues: Optional[int] = None,
    ) -> str:
        """The libvirt ``<qemu:commandline>`` element with
        :meth:`qemu_args`. It declares the ``qemu`` namespace itself, so it
        parses on its own; in a domain it goes under ``<domain>``."""
        args = self.qemu_args(bus=bus, addr=addr, bootindex=bootindex, num_queues=num_queues)
        lines = ["<qemu:commandline xmlns:qemu=%s>" % quoteattr(QEMU_XML_NAMESPACE)]
        lines += ["  <qemu:arg value=%s/>" % quoteattr(arg) for arg in args]
        lines.append("</qemu:commandline>")
        return "\n".join(lines)

    @property
    def libvirt_xml(self) -> str:
        """:meth:`qemu_commandline_xml` with the endpoint's placement."""
        return self.qemu_commandline_xml()

    @property
    def memory_backing_xml(self) -> str:
        """The ``<memoryBacking>`` element the domain needs
        (:data:`MEMORY_BACKING_XML`)."""
        return MEMORY_BACKING_XML


def _qemu_opt(value: str) -> str:
    """A QEMU option value: commas doubled."""
    return value.replace(",", ",,")


class VhostUserScsiExecutor:
    """Creates, lists and deletes endpoints on a vhost-user-scsi daemon.

    ``rpc_socket`` is the daemon's ``--rpc-socket`` (default
    ``$VHOST_USER_SCSI_RPC`` or ``/run/vhost-user-scsi/rpc.sock``); or pass
    an :class:`RpcClient` as ``client``. ``socket_dir`` is where endpoint
    sockets go unless :meth:`create_endpoint` says otherwise.

    Errors are :class:`~vhost_user_scsi.rpc.RpcError` with the daemon's
    code and message, or :class:`~vhost_user_scsi.rpc.RpcConnectionError`.
    """

    def __init__(
        self,
        rpc_socket: Optional[str] = None,
        *,
        timeout: float = 30.0,
        socket_dir: str = DEFAULT_SOCKET_DIR,
        client: Optional[RpcClient] = None,
    ) -> None:
        self.client = client if client is not None else RpcClient(rpc_socket, timeout)
        self.socket_dir = os.fspath(socket_dir)

    def __repr__(self) -> str:
        return "VhostUserScsiExecutor(%r, socket_dir=%r)" % (
            self.client.path,
            self.socket_dir,
        )

    def create_endpoint(
        self,
        volume_path: Optional[str],
        *,
        name: Optional[str] = None,
        lun: int = 0,
        num_queues: int = DEFAULT_NUM_QUEUES,
        readonly: bool = False,
        serial: Optional[str] = None,
        block_size: Optional[int] = None,
        socket_dir: Optional[str] = None,
        initiator: Optional[str] = None,
        socket_group: Optional[str] = None,
        socket_mode: Optional[str] = None,
        pci_bus: str = DEFAULT_PCI_BUS,
        pci_addr: str = DEFAULT_PCI_ADDR,
        bootindex: Optional[int] = None,
        reconnect_ms: Optional[int] = DEFAULT_RECONNECT_MS,
    ) -> Endpoint:
        """Create a controller named ``name`` (default ``vus-<uuid4>``)
        listening on ``<socket_dir>/<name>.sock`` and add ``volume_path`` as
        LUN ``lun``; returns the endpoint. With ``volume_path=None`` the
        controller has no LUN yet (volumes are hot-attached later with
        :meth:`add_lun`).

        ``initiator`` is the guest's identity for persistent reservations
        (the instance UUID; give both ends of a live migration the same).
        ``socket_group`` (a group name such as ``kvm``) and ``socket_mode``
        (octal, ``"0660"``) set the socket's permissions and are sent only
        when given (they need a daemon that knows them). ``pci_bus``,
        ``pci_addr``, ``bootindex`` (0 to boot from the volume) and
        ``reconnect_ms`` only shape the endpoint's XML.

        ``socket_dir`` is created if missing. If adding the LUN fails, the
        controller is deleted again and the error re-raised: nothing is left
        behind.
        """
        if name is None:
            name = "vus-" + str(uuid.uuid4())
        socket_dir = self.socket_dir if socket_dir is None else os.fspath(socket_dir)
        try:
            os.makedirs(socket_dir, exist_ok=True)
        except OSError as e:
            # The daemon (which may have other rights) says what is wrong.
            LOG.debug("cannot create %s: %s", socket_dir, e)
        socket_path = os.path.join(socket_dir, name + ".sock")
        info = dict(
            self.client.controller_create(
                name,
                socket_path,
                num_queues=num_queues,
                initiator=initiator,
                socket_group=socket_group,
                socket_mode=socket_mode,
            )
        )
        if volume_path is not None:
            try:
                lun_info = self.client.lun_add(
                    name,
                    os.fspath(volume_path),
                    lun=lun,
                    readonly=readonly,
                    block_size=block_size,
                    serial=serial,
                )
            except BaseException as e:
                LOG.info("lun_add of %s to %s failed (%s): deleting it", volume_path, name, e)
                self._rollback(name)
                raise
            info["luns"] = [lun_info]
        return Endpoint.from_api(
            info,
            pci_bus=pci_bus,
            pci_addr=pci_addr,
            bootindex=bootindex,
            reconnect_ms=reconnect_ms,
        )

    def _rollback(self, name: str) -> None:
        try:
            self.client.controller_delete(name, force=True)
        except VhostUserScsiError as e:
            LOG.warning("cannot delete controller %s after a failed lun_add: %s", name, e)

    def delete_endpoint(self, name: str, force: bool = False, missing_ok: bool = False) -> None:
        """Delete the controller ``name`` and its LUNs (the disks are
        flushed, the socket removed). Refused (``RpcError`` with code
        :data:`~vhost_user_scsi.rpc.BUSY`) while QEMU is connected, unless
        ``force`` (the guest loses the disks). ``missing_ok``: an unknown
        name is not an error."""
        try:
            self.client.controller_delete(name, force=force)
        except RpcError as e:
            if not (missing_ok and e.code == NOT_FOUND):
                raise

    def list_endpoints(self) -> List[Endpoint]:
        """Every controller of the daemon, with its LUNs and whether QEMU
        is connected. The XML fields have their defaults."""
        return [Endpoint.from_api(info) for info in self.client.controller_list()]

    def get_endpoint(self, name: str) -> Optional[Endpoint]:
        """The endpoint ``name``, or None."""
        for endpoint in self.list_endpoints():
            if endpoint.name == name:
                return endpoint
        return None

    def add_lun(
        self,
        name: str,
        volume_path: str,
        *,
        lun: Optional[int] = None,
        readonly: bool = False,
        serial: Optional[str] = None,
        block_size: Optional[int] = None,
    ) -> Lun:
        """Attach another volume to endpoint ``name`` (default LUN number:
        the lowest free). A running guest sees the disk appear."""
        return Lun.from_api(
            self.client.lun_add(
                name,
                os.fspath(volume_path),
                lun=lun,
                readonly=readonly,
                block_size=block_size,
                serial=serial,
            )
        )

    def remove_lun(self, name: str, lun: int) -> None:
        """Detach LUN ``lun`` from endpoint ``name``. A running guest sees
        the disk go away; I/O already in flight completes."""
        self.client.lun_remove(name, lun)

    def extend_lun(self, name: str, lun: int, size: Optional[int] = None) -> Lun:
        """Grow LUN ``lun`` of endpoint ``name``: an image file to ``size``
        bytes, or (``size=None``) re-read the size of a device resized
        elsewhere. The guest is told the capacity changed."""
        return Lun.from_api(self.client.lun_resize(name, lun, size))

    def stats(self, name: Optional[str] = None) -> Dict[str, Any]:
        """The daemon's counters, of every endpoint or of ``name``."""
        return self.client.stats(controller=name)
