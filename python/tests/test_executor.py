"""The endpoint executor against the real daemon."""

import grp
import os
import shutil
import socket
import stat
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest
from conftest import Daemon

from vhost_user_scsi import (
    BUSY,
    EXISTS,
    FAILED,
    INVALID_PARAMS,
    MEMORY_BACKING_XML,
    NOT_FOUND,
    QEMU_XML_NAMESPACE,
    Endpoint,
    RpcClient,
    RpcConnectionError,
    RpcError,
    VhostUserScsiExecutor,
)

Q = "{%s}" % QEMU_XML_NAMESPACE


def is_socket(path):
    return os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode)


def test_create_list_delete(executor, image, workdir):
    path = image("vol1.img", 64 << 20)
    ep = executor.create_endpoint(path, name="vm1", num_queues=2)
    assert ep.name == "vm1"
    assert ep.socket == str(workdir / "s" / "vm1.sock")
    assert is_socket(ep.socket)
    assert ep.lun == 0 and ep.num_queues == 2 and not ep.connected
    assert [(lun.lun, lun.path, lun.size, lun.readonly) for lun in ep.luns] == [
        (0, path, 64 << 20, False)
    ]

    [listed] = executor.list_endpoints()
    assert (listed.name, listed.socket, listed.connected) == ("vm1", ep.socket, False)
    assert listed.state == "listening"
    assert [(lun.lun, lun.path) for lun in listed.luns] == [(0, path)]
    assert executor.get_endpoint("vm1") == listed
    assert executor.get_endpoint("vm2") is None

    executor.delete_endpoint("vm1")
    assert executor.list_endpoints() == []
    assert not os.path.exists(ep.socket)


def test_options_reach_the_daemon(executor, image):
    ep = executor.create_endpoint(
        image(), name="vm1", lun=3, readonly=True, serial="vol-1234", initiator="uuid-1"
    )
    [lun] = ep.luns
    assert (lun.lun, lun.readonly, lun.serial, lun.block_size) == (3, True, "vol-1234", 512)
    assert ep.initiator == "uuid-1"
    [listed] = executor.list_endpoints()
    assert listed.luns == ep.luns and listed.initiator == "uuid-1"


def test_default_names_are_unique(executor, image):
    a = executor.create_endpoint(image("a.img"))
    b = executor.create_endpoint(image("b.img"))
    assert a.name != b.name and a.name.startswith("vus-")
    assert sorted(e.name for e in executor.list_endpoints()) == sorted([a.name, b.name])


def test_add_and_remove_luns(executor, image):
    ep = executor.create_endpoint(image("root.img"), name="vm1")
    data = image("data.img", 8 << 20)
    lun = executor.add_lun("vm1", data)
    assert (lun.lun, lun.path, lun.size) == (1, data, 8 << 20)
    assert [x.lun for x in executor.get_endpoint("vm1").luns] == [0, 1]
    assert executor.extend_lun("vm1", 1, 16 << 20).size == 16 << 20
    assert os.path.getsize(data) == 16 << 20
    executor.remove_lun("vm1", 1)
    assert executor.get_endpoint("vm1").luns == ep.luns
    with pytest.raises(RpcError) as info:
        executor.remove_lun("vm1", 1)
    assert info.value.code == NOT_FOUND


def test_missing_volume_raises_the_daemons_error_and_leaves_nothing(executor, workdir, image):
    missing = str(workdir / "missing.img")
    with pytest.raises(RpcError) as info:
        executor.create_endpoint(missing, name="vm1")
    assert info.value.code == FAILED
    assert missing in info.value.message and "No such file" in info.value.message
    assert executor.list_endpoints() == []
    assert not os.path.exists(str(workdir / "s" / "vm1.sock"))
    # The name and socket are free again.
    assert executor.create_endpoint(image(), name="vm1").name == "vm1"


def test_duplicate_name(executor, image):
    executor.create_endpoint(image("a.img"), name="vm1")
    before = executor.list_endpoints()
    with pytest.raises(RpcError) as info:
        executor.create_endpoint(image("b.img"), name="vm1")
    assert info.value.code == EXISTS and "vm1" in info.value.message
    # The failed create left the endpoint that has the name alone.
    assert executor.list_endpoints() == before


def test_delete_unknown(executor):
    with pytest.raises(RpcError) as info:
        executor.delete_endpoint("nope")
    assert info.value.code == NOT_FOUND and "nope" in info.value.message
    executor.delete_endpoint("nope", missing_ok=True)


def test_rollback_when_lun_add_is_refused(executor, image):
    # A disk shared by two endpoints must be attached the same way: the
    # second lun_add fails after its controller_create succeeded.
    shared = image("shared.img")
    executor.create_endpoint(shared, name="vm1")
    with pytest.raises(RpcError) as info:
        executor.create_endpoint(shared, name="vm2", readonly=True)
    assert info.value.code == EXISTS
    assert [e.name for e in executor.list_endpoints()] == ["vm1"]
    assert executor.create_endpoint(shared, name="vm2").luns[0].path == shared


def test_rollback_when_lun_add_breaks(daemon, workdir, image):
    class Broken(RpcClient):
        def lun_add(self, *args, **kwargs):
            raise RpcConnectionError("connection lost")

    executor = VhostUserScsiExecutor(client=Broken(daemon.rpc_socket), socket_dir=str(workdir))
    with pytest.raises(RpcConnectionError, match="connection lost"):
        executor.create_endpoint(image(), name="vm1")
    assert executor.list_endpoints() == []


def wait_connected(executor, name, connected):
    """Until the endpoint is connected (or listening again)."""
    want = (connected, "connected" if connected else "listening")
    deadline = time.monotonic() + 5
    while True:
        ep = executor.get_endpoint(name)
        if (ep.connected, ep.state) == want:
            return
        assert time.monotonic() < deadline, "endpoint %s, %s: never %s" % (
            ep.connected,
            ep.state,
            want,
        )
        time.sleep(0.02)


def test_socket_accepts_a_connection_and_delete_waits_for_it(executor, image):
    ep = executor.create_endpoint(image(), name="vm1")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(ep.socket)
        wait_connected(executor, "vm1", True)
        with pytest.raises(RpcError) as info:
            executor.delete_endpoint("vm1")
        assert info.value.code == BUSY
    # "QEMU" quit: the endpoint listens again and can be deleted.
    wait_connected(executor, "vm1", False)
    executor.delete_endpoint("vm1")
    assert executor.list_endpoints() == []


def test_force_delete_disconnects(executor, image):
    ep = executor.create_endpoint(image(), name="vm1")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(ep.socket)
        wait_connected(executor, "vm1", True)
        executor.delete_endpoint("vm1", force=True)
        assert executor.list_endpoints() == []
        assert s.recv(1) == b""  # the daemon closed its end


def test_libvirt_xml(executor, image):
    ep = executor.create_endpoint(image(), name="vm1", num_queues=2, bootindex=0)
    root = ET.fromstring(ep.libvirt_xml)
    assert root.tag == Q + "commandline"
    args = [arg.get("value") for arg in root.findall(Q + "arg")]
    assert args == ep.qemu_args()
    assert args == [
        "-chardev",
        "socket,id=vus-vm1-chr,path=%s,reconnect-ms=1000" % ep.socket,
        "-device",
        "vhost-user-scsi-pci,id=vus-vm1,chardev=vus-vm1-chr,num_queues=2,"
        "bus=pcie.0,addr=0x10,bootindex=0",
    ]
    assert ep.socket in ep.libvirt_xml

    memory = ET.fromstring(ep.memory_backing_xml)
    assert memory.tag == "memoryBacking"
    assert memory.find("source").get("type") == "memfd"
    assert memory.find("access").get("mode") == "shared"

    # Both go straight into a domain.
    domain = ET.fromstring(
        "<domain type='kvm' xmlns:qemu='%s'><name>vm1</name>%s%s</domain>"
        % (QEMU_XML_NAMESPACE, MEMORY_BACKING_XML, ep.libvirt_xml)
    )
    assert domain.find("memoryBacking/access") is not None
    assert len(domain.findall(Q + "commandline/" + Q + "arg")) == 4


def test_xml_placement_parameters():
    ep = Endpoint(
        name="vm1", socket="/run/a,b/vm1.sock", num_queues=4, pci_bus="pci.0", pci_addr="0x7"
    )
    device = ep.qemu_args()[3]
    assert "bus=pci.0,addr=0x7" in device and "bootindex" not in device
    assert "path=/run/a,,b/vm1.sock," in ep.qemu_args()[1]
    other = ep.qemu_args(bus="pcie.1", addr="0x0", bootindex=2, num_queues=1)[3]
    assert other.endswith("num_queues=1,bus=pcie.1,addr=0x0,bootindex=2")
    assert "bus=" not in ep.qemu_args(bus="")[3]
    no_reconnect = Endpoint(name="vm1", socket="/s", reconnect_ms=None)
    assert no_reconnect.qemu_args()[1] == "socket,id=vus-vm1-chr,path=/s"
    root = ET.fromstring(ep.qemu_commandline_xml(bootindex=0))
    assert root.findall(Q + "arg")[3].get("value").endswith(",bootindex=0")


def test_socket_group_is_sent_only_when_given(fake_server, workdir):
    def handler(request):
        p = request.get("params", {})
        if request["method"] == "controller_create":
            result = {"name": p["name"], "socket": p["socket"], "num_queues": 4, "luns": []}
        else:
            result = {"lun": 0, "path": p["path"], "size": 512}
        return {"jsonrpc": "2.0", "id": request["id"], "result": result}

    server = fake_server(handler)
    executor = VhostUserScsiExecutor(server.path, socket_dir=str(workdir))
    executor.create_endpoint("/v", name="a")
    executor.create_endpoint("/v", name="b", socket_group="kvm", socket_mode="0660")
    creates = [r["params"] for r in server.requests if r["method"] == "controller_create"]
    assert creates[0] == {"name": "a", "socket": str(workdir / "a.sock"), "num_queues": 4}
    assert (creates[1]["socket_group"], creates[1]["socket_mode"]) == ("kvm", "0660")
    adds = [r["params"] for r in server.requests if r["method"] == "lun_add"]
    assert adds[0] == {"controller": "a", "path": "/v", "lun": 0}


def test_socket_group(executor, image):
    # A group other than ours, so that the daemon must have set it.
    others = [g for g in grp.getgrall() if g.gr_gid != os.getgid()]
    group = next((g for g in others if g.gr_name == "kvm"), others[0] if others else None)
    if group is None:
        pytest.skip("no group other than our own")
    try:
        ep = executor.create_endpoint(
            image(), name="vm1", socket_group=group.gr_name, socket_mode="0660"
        )
    except RpcError as e:
        if e.code == INVALID_PARAMS and "unknown field `socket_group`" in e.message:
            pytest.skip("this daemon has no socket_group: %s" % e)
        raise
    st = os.stat(ep.socket)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group.gr_gid
    assert (ep.socket_group, ep.socket_mode) == (group.gr_name, "0660")
    listed = executor.get_endpoint("vm1")
    assert (listed.socket_group, listed.socket_mode) == (group.gr_name, "0660")


def test_unknown_socket_group(executor, image):
    try:
        executor.create_endpoint(image(), name="vm1", socket_group="no-such-group-vus")
    except RpcError as e:
        if "unknown field `socket_group`" in e.message:
            pytest.skip("this daemon has no socket_group: %s" % e)
        assert e.code == INVALID_PARAMS and "no-such-group-vus" in e.message
    else:
        pytest.fail("an unknown group was accepted")
    assert executor.list_endpoints() == []


def test_state_file_keeps_endpoints_across_restarts(workdir, image):
    args = ["--state-file", str(workdir / "state.json")]
    path = image()
    d = Daemon(workdir, args)
    try:
        executor = VhostUserScsiExecutor(d.rpc_socket, socket_dir=str(workdir / "s"))
        ep = executor.create_endpoint(path, name="vm1", serial="vol-1")
    finally:
        assert d.stop() == 0, d.log()
    d = Daemon(workdir, args)
    try:
        [listed] = executor.list_endpoints()
        assert (listed.name, listed.socket, listed.luns) == ("vm1", ep.socket, ep.luns)
        assert is_socket(ep.socket)
        executor.delete_endpoint("vm1")
    finally:
        assert d.stop() == 0, d.log()


def test_daemon_down(workdir):
    executor = VhostUserScsiExecutor(
        str(workdir / "none.sock"), timeout=1, socket_dir=str(workdir)
    )
    with pytest.raises(RpcConnectionError):
        executor.list_endpoints()


def test_loop_device(executor, image):
    """A LUN on a block device (a loop device over an image file)."""
    why = None
    losetup = shutil.which("losetup")
    if losetup is None:
        why = "losetup is not installed"
    else:
        out = subprocess.run(
            [losetup, "--find", "--show", image("loop.img", 16 << 20)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            why = "losetup failed: %s" % out.stderr.strip()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail("loop device needed in CI: %s" % why)
        pytest.skip(why)
    device = out.stdout.strip()
    try:
        ep = executor.create_endpoint(device, name="vm1")
        [lun] = ep.luns
        assert (lun.path, lun.size) == (device, 16 << 20)
        assert [x.path for x in executor.get_endpoint("vm1").luns] == [device]
        executor.delete_endpoint("vm1")
    finally:
        subprocess.run([losetup, "-d", device], check=False)


def test_endpoint_without_a_volume_gets_luns_later(executor, image):
    ep = executor.create_endpoint(None, name="vm1")
    assert ep.luns == () and ep.lun is None
    path = image()
    assert executor.add_lun("vm1", path).lun == 0
    assert executor.get_endpoint("vm1").lun == 0


def test_qemu_connects_with_the_generated_arguments(executor, image):
    """QEMU (stopped before the guest runs) takes the endpoint's arguments
    and connects to its socket."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        if os.environ.get("CI") == "true":
            pytest.fail("qemu-system-x86_64 needed in CI: run scripts/install-deps.sh")
        pytest.skip("qemu-system-x86_64 is not installed")
    ep = executor.create_endpoint(image(), name="vm1", num_queues=2, bootindex=0)
    args = [qemu, "-machine", "q35,memory-backend=mem", "-m", "128M"]
    args += ["-object", "memory-backend-memfd,id=mem,size=128M,share=on"]
    args += ["-nodefaults", "-display", "none", "-S", "-monitor", "none"]
    proc = subprocess.Popen(
        args + ep.qemu_args(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not executor.get_endpoint("vm1").connected:
            if proc.poll() is not None:
                pytest.fail("QEMU exited: %s" % proc.stderr.read().decode(errors="replace"))
            assert time.monotonic() < deadline, "QEMU never connected"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    wait_connected(executor, "vm1", False)
    executor.delete_endpoint("vm1")
