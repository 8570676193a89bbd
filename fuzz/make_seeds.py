#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/<target>/seed-* (issue 14).

The binary targets (chain, scsi, inflight) decode their bytes as described
in src/fuzzing/<target>.rs; these seeds are well-formed requests the
fuzzer mutates from (a chain with a command and its buffers, a SCSI
session that touches every kind of outcome, a used inflight region). The
text targets get valid documents. The rest of fuzz/corpus/ is what
`scripts/fuzz.sh` runs found, minimised with libFuzzer's -merge=1.

Usage: python3 fuzz/make_seeds.py   (from anywhere; rewrites seed-* only)
"""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


u8 = lambda v: struct.pack("<B", v)
u16 = lambda v: struct.pack("<H", v)
u32 = lambda v: struct.pack("<I", v)
u64 = lambda v: struct.pack("<Q", v)

# ---- chain ----------------------------------------------------------------
NEXT, WRITE, INDIRECT = 1, 2, 4


def desc(flags, sel, off, length, nxt):
    return u8(flags) + u8(sel) + u16(off) + u16(length) + u8(nxt)


def cmd_header(cdb):
    lun = bytes([1, 0, 0x40, 0, 0, 0, 0, 0])
    return lun + u64(7) + bytes([0, 0, 0]) + cdb.ljust(32, b"\0")


def chain_seed(regions, qlog, head, table, indirect, descs, ind, fill):
    out = u8(len(regions) - 1) + u8(0)
    for size_pages, gap in regions:
        out += u8(size_pages - 1) + u8(gap)
    out += u8(qlog) + u16(head)
    out += u8(table[0]) + u16(table[1]) + u8(indirect[0]) + u16(indirect[1])
    out += u8(len(descs)) + b"".join(descs) + u8(len(ind)) + b"".join(ind)
    out += u16(60)  # split_at
    return out + fill


def fill_with(at, payload, size=0x300):
    buf = bytearray(size)
    buf[at:at + len(payload)] = payload
    return bytes(buf)


inquiry = cmd_header(bytes([0x12, 0, 0, 0, 36, 0]))
write10 = cmd_header(bytes([0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]))
direct = [desc(NEXT, 0, 0x200, 51, 1), desc(NEXT | WRITE, 0, 0x240, 108, 2),
          desc(WRITE, 0, 0x2c0, 36, 0)]
put("chain", "inquiry-direct",
    chain_seed([(4, 0)], 8, 0, (0, 0), (0, 0x100), direct, [], fill_with(0x200, inquiry)))
put("chain", "inquiry-indirect",
    chain_seed([(4, 0)], 8, 0, (0, 0), (0, 0x100), [desc(INDIRECT, 0, 0x100, 48, 0)], direct,
               fill_with(0x200, inquiry)))
# Three regions: A and B adjacent, a hole, C; data-out straddles A|B.
put("chain", "write-three-regions",
    chain_seed([(1, 0), (1, 1), (1, 0)], 4, 1, (0, 0), (2, 0x40),
               [desc(0, 0, 0, 0, 0), desc(NEXT, 0, 0x200, 51, 2),
                desc(NEXT, 0, 0xf00, 0x200, 3), desc(WRITE, 2, 0x10, 108, 0)],
               [], fill_with(0x200, write10)))
tmf = u32(0) + u32(5) + bytes([1, 0, 0x40, 0, 0, 0, 0, 0]) + u64(0)
put("chain", "tmf-lun-reset",
    chain_seed([(2, 0)], 2, 0, (0, 0), (0, 0x100),
               [desc(NEXT, 0, 0x200, 24, 1), desc(WRITE, 0, 0x240, 1, 0)], [],
               fill_with(0x200, tmf)))

# ---- scsi -----------------------------------------------------------------
def scsi_cfg(bs4k=False, blocks_sel=2, flags=0x02, max_xfer=0, caw=1):
    return (u8(1 if bs4k else 0) + u8(blocks_sel) + u8(flags) + u8(max_xfer) + u8(0)
            + u16(1023) + u8(63) + u16(0) + u8(caw))


def cmd(cdb, data=b"", nexus=0, cached=False):
    return u8(2 if not cached else 1) + u8(nexus) + u8(len(cdb)) + cdb + u16(len(data)) + data


def op(code, nexus=0, extra=b""):
    return u8(code) + u8(nexus) + extra


def be16(v): return struct.pack(">H", v)
def be32(v): return struct.pack(">I", v)
def be64(v): return struct.pack(">Q", v)


tur = bytes(6)
session = scsi_cfg()
session += cmd(tur) + cmd(bytes([0x12, 0, 0, 0, 96, 0]))
session += cmd(bytes([0x12, 1, 0xb0, 0, 64, 0]))
session += cmd(bytes([0x9e, 0x10]) + bytes(8) + be32(32) + bytes(2))
session += cmd(bytes([0x2a, 0]) + be32(8) + bytes([0]) + be16(4) + bytes([0]), b"")
session += cmd(bytes([0x28, 0]) + be32(8) + bytes([0]) + be16(4) + bytes([0]))
session += cmd(bytes([0x42, 0, 0, 0, 0, 0, 0]) + be16(24) + bytes([0]),
               be16(22) + be16(16) + bytes(4) + be64(0) + be32(16) + bytes(4))
session += cmd(bytes([0x93, 0x08]) + be64(64) + be32(8) + bytes(2), bytes(512))
session += cmd(bytes([0x89, 0]) + be64(3) + bytes(3) + bytes([1, 0, 0]), bytes(1024))
session += cmd(bytes([0x9e, 0x12]) + be64(0) + be32(64) + bytes(2))
session += cmd(bytes([0x2f, 0]) + be32(0) + bytes([0]) + be16(2) + bytes([0]))
session += cmd(bytes([0x2e, 0x02]) + be32(2) + bytes([0]) + be16(1) + bytes([0]), bytes(512))
session += cmd(bytes([0x35]) + bytes(9))
session += cmd(bytes([0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0]),
               bytes(8) + be64(0x1234) + bytes(8), nexus=1)
session += cmd(bytes([0x5f, 0x01, 0x01, 0, 0, 0, 0, 0, 24, 0]),
               be64(0x1234) + bytes(16), nexus=1)
session += cmd(bytes([0x5e, 0x00, 0, 0, 0, 0, 0, 0x10, 0, 0]), nexus=1)
session += cmd(bytes([0x2a, 0]) + be32(0) + bytes([0]) + be16(1) + bytes([0]), nexus=2)
session += cmd(bytes([0x1a, 0, 0x3f, 0, 0xff, 0]))
session += cmd(bytes([0x15, 0x10, 0, 0, 24, 0]),
               bytes([0, 0, 0, 0]) + bytes([0x08, 0x12, 0x04]) + bytes(17))
session += cmd(bytes([0xa0, 0, 0, 0, 0, 0]) + be32(64) + bytes(2))
session += op(0x70) + op(0x71, 1) + op(0x72, 0, u16(100)) + op(0x73) + op(0x74) + op(0x74)
session += cmd(tur) + cmd(bytes([0x03, 0, 0, 0, 18, 0]))
put("scsi", "session", session)
put("scsi", "readonly-4k", scsi_cfg(bs4k=True, blocks_sel=0, flags=0x01, max_xfer=8)
    + u8(200) + cmd(tur) + cmd(bytes([0x88, 0]) + be64(1) + be32(9) + bytes(2))
    + cmd(bytes([0x8a, 0]) + be64(1) + be32(1) + bytes(2)))
# PERSISTENT RESERVE OUT REGISTER with APTPL, RESERVE, a restart (0x75),
# READ KEYS / READ RESERVATION; then a saved state from the input (0x76):
# holder 1, Write Exclusive, two registrations.
aptpl = scsi_cfg() + cmd(tur, nexus=1)
aptpl += cmd(bytes([0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0]),
             bytes(8) + be64(0xabc) + bytes(4) + bytes([1, 0, 0, 0]), nexus=1)
aptpl += cmd(bytes([0x5f, 0x01, 0x01, 0, 0, 0, 0, 0, 24, 0]), be64(0xabc) + bytes(16), nexus=1)
aptpl += op(0x75) + cmd(tur, nexus=1)
aptpl += cmd(bytes([0x5e, 0x00, 0, 0, 0, 0, 0, 0x10, 0, 0]), nexus=1)
aptpl += cmd(bytes([0x5e, 0x01, 0, 0, 0, 0, 0, 0x10, 0, 0]), nexus=2)
saved = (b"VUSPR\x00\x00\x01" + be32(3) + bytes([1]) + bytes([1]) + be64(1) + bytes([1])
         + be32(2) + be64(1) + be64(0x11) + be64(2) + be64(0x22))
aptpl += op(0x76, 0, u8(len(saved)) + saved) + cmd(tur, nexus=2)
aptpl += cmd(bytes([0x2a, 0]) + be32(0) + bytes([0]) + be16(1) + bytes([0]), nexus=2)
aptpl += cmd(bytes([0x5e, 0x00, 0, 0, 0, 0, 0, 0x10, 0, 0]), nexus=2)
put("scsi", "pr-aptpl-restart", aptpl)
put("scsi", "unmapped-lun", scsi_cfg() + u8(0x82) + u8(0) + u16(7) + u8(6)
    + bytes([0x12, 0, 0, 0, 36, 0]) + u16(0))

# ---- inflight -------------------------------------------------------------
def inflight_queue(version, desc_num, lbh, used, flags):
    part = u64(0) + u16(version) + u16(desc_num) + u16(lbh) + u16(used)
    for i, (f, rec, ln, counter) in enumerate(flags):
        part += u8(f) + u8(rec) + u32(ln) + u16(0) + u64(counter)
    return part


qsize = 8
region = inflight_queue(1, qsize, 2, 5, [(1, 0, 0, 3), (0, 0, 0, 0), (1, 1, 4096, 1),
                                          (1, 2, 0, 2)] + [(0, 0, 0, 0)] * 4)
region = region.ljust(((16 + 16 * qsize + 63) // 64) * 64, b"\0")
ops = bytes([0, 1, 0, 2, 2, 0, 1, 5, 0, 0, 6, 0])
head = u8(1) + u16(qsize) + u8(0) + u8(0) + u8(0)
put("inflight", "one-queue-used", head + u16(5) + u8(1) + u8(4) + ops + region)
put("inflight", "two-queues-fresh", u8(2) + u16(16) + u8(0) + u8(0) + u8(0)
    + u16(0) + u8(1) + u8(0) + u16(9) + u8(1) + u8(0))

# ---- config, state, rpc ---------------------------------------------------
put("config", "full", """rpc_socket = "/run/vhost-user-scsi/rpc.sock"
metrics_addr = "127.0.0.1:9184"
pr_state = "/var/lib/vhost-user-scsi/pr"
socket_group = "kvm"
socket_mode = "0660"
rpc_socket_group = "0"

[[controller]]
name = "vm1"
socket = "/run/vhost-user-scsi/vm1.sock"
num_queues = 2
queue_size = 256
initiator = "iqn.2026-01.test:vm1"

[[controller.lun]]
lun = 0
path = "/var/lib/images/vm1.img"
block_size = 4096
serial = "vm1-root"

[[controller.lun]]
path = "/dev/sdb"
readonly = true

[[controller]]
name = "vm2"
socket = "/run/vhost-user-scsi/vm2.sock"
""")
put("config", "state-file", 'state_file = "/var/lib/vhost-user-scsi/state.json"\n'
    'metrics_addr = "unix:/run/vhost-user-scsi/metrics.sock"\n')
put("config", "single-table-mistake", '[controller]\nname = "a"\nsocket = "/s"\n')
state = {"version": 1, "controllers": [
    {"name": "vm1", "socket": "/run/vhost-user-scsi/vm1.sock", "num_queues": 2,
     "queue_size": 256, "initiator": "iqn.x:vm1", "socket_group": "kvm", "socket_mode": "0660",
     "luns": [{"lun": 0, "path": "/var/lib/images/vm1.img", "readonly": False,
               "block_size": 512, "serial": "vm1-root"},
              {"lun": 1, "path": "/dev/sdb", "readonly": True}]},
    {"name": "vm2", "socket": "/run/vm2.sock"}]}
put("state", "full", json.dumps(state, indent=2) + "\n")
put("state", "empty", '{"version": 1}\n')
put("state", "duplicate-lun", json.dumps({"version": 1, "controllers": [
    {"name": "a", "socket": "/a", "luns": [{"lun": 3, "path": "/x"}, {"lun": 3, "path": "/y"}]}]}))

calls = [
    {"jsonrpc": "2.0", "id": 1, "method": "controller_create",
     "params": {"name": "vm1", "socket": "/run/vm1.sock", "num_queues": 2, "queue_size": 128,
                "initiator": "iqn.x:vm1", "socket_mode": "0660"}},
    {"jsonrpc": "2.0", "id": "two", "method": "lun_add",
     "params": {"controller": "vm1", "path": "/img", "block_size": 4096, "serial": "s1"}},
    {"jsonrpc": "2.0", "id": 3, "method": "lun_resize",
     "params": {"controller": "vm1", "lun": 0, "size": 1073741824}},
    {"jsonrpc": "2.0", "id": 4, "method": "controller_list"},
    {"jsonrpc": "2.0", "id": 5, "method": "stats", "params": {"controller": "vm1", "lun": 0}},
    {"jsonrpc": "2.0", "id": None, "method": "lun_remove", "params": {"controller": "vm1", "lun": 0}},
    {"jsonrpc": "2.0", "method": "version"},
    {"jsonrpc": "2.0", "id": 8, "method": "controller_delete", "params": {"name": "vm1", "force": True}},
]
put("rpc", "session", "\n".join(json.dumps(c) for c in calls) + "\n")
put("rpc", "batch", json.dumps(calls[:4]) + "\n" + json.dumps([calls[6]]) + "\n[]\n")
put("rpc", "invalid", '{"jsonrpc": "1.0", "id": 1, "method": "version"}\n'
    '{"jsonrpc": "2.0", "id": [1], "method": "version"}\n'
    '{"jsonrpc": "2.0", "id": 2, "method": "shutdown", "params": 5}\n'
    '{"jsonrpc": "2.0", "id": 3, "method": "nope"}\n'
    '{"jsonrpc": "2.0", "id": 4, "method": "lun_add", "params": {"controller": 1}}\n'
    '{"jsonrpc": "2.0", "id": 5, "method": "version", "params": {"x": 1}}\n{"a":')

# vhost_user: one connection (src/fuzzing/vhost_user.rs): message count,
# guest memory size selector, guest memory contents, then per message
# code byte (request - 1), flags selector, payload length, payload, fd
# count and fd kinds (0: the guest memfd, 1: an eventfd, 2: a memfd of
# u16 * 64 bytes).
def vu_msg(request, payload=b"", fds=(), need_reply=False, extra=b""):
    return (u8(request - 1) + u8(1 if need_reply else 0) + u16(len(payload)) + payload
            + u8(len(fds)) + b"".join(u8(k) + (extra if k == 2 else b"") for k in fds))


def vu_state(index, num):
    return u32(index) + u32(num)


UADDR = 0x7F0000000000
VU_MEM_SEL = 0          # 64 KiB of guest memory
RING = 16
DESC, AVAIL, USED = 0x0, 0x100, 0x180
REQ, RESP = 0x240, 0x280


def vu_memory():
    mem = bytearray(RESP)
    # Descriptor 0: the request header, then descriptor 1: the response.
    mem[DESC:DESC + 16] = u64(REQ) + u32(51) + u16(1) + u16(1)
    mem[DESC + 16:DESC + 32] = u64(RESP) + u32(108) + u16(2) + u16(0)
    mem[AVAIL:AVAIL + 6] = u16(0) + u16(1) + u16(0)
    # LUN 0 of target 0, tag 7, TEST UNIT READY.
    mem[REQ:REQ + 8] = bytes([1, 0, 0x40, 0, 0, 0, 0, 0])
    mem[REQ + 8:REQ + 16] = u64(7)
    return bytes(mem)


def vu_ring(q):
    addr = u32(q) + u32(0) + u64(UADDR + DESC) + u64(UADDR + USED) + u64(UADDR + AVAIL) + u64(0)
    return [vu_msg(8, vu_state(q, RING)), vu_msg(9, addr), vu_msg(10, vu_state(q, 0)),
            vu_msg(13, u64(q), fds=(1,)), vu_msg(12, u64(q), fds=(1,)),
            vu_msg(18, vu_state(q, 1))]


def vu_session(msgs):
    mem = vu_memory()
    return u8(len(msgs)) + u8(VU_MEM_SEL) + u16(len(mem)) + mem + b"".join(msgs)


features = (1 << 32) | (1 << 30) | (1 << 29)
table = u32(1) + u32(0) + u64(0) + u64(64 << 10) + u64(UADDR) + u64(0)
handshake = [vu_msg(1), vu_msg(15), vu_msg(16, u64(0x100b)), vu_msg(3), vu_msg(2, u64(features)),
             vu_msg(17), vu_msg(5, table, fds=(0,), need_reply=True)]
put("vhost_user", "handshake-io", vu_session(handshake + vu_ring(2) + [vu_msg(11, vu_state(2, 0))]))
put("vhost_user", "inflight-log", vu_session(
    handshake + [vu_msg(31, u64(0) + u64(0) + u16(4) + u16(RING) + u32(0), need_reply=True),
                     vu_msg(32, u64(4096) + u64(0) + u16(4) + u16(RING) + u32(0), fds=(2,), extra=u16(64)),
                     vu_msg(6, u64(4096) + u64(0), fds=(2,), extra=u16(64)),
                     vu_msg(2, u64(features | (1 << 26)))] + vu_ring(2)))
put("vhost_user", "config-and-slots", vu_session(
    [vu_msg(15), vu_msg(16, u64(0x9 | (1 << 9) | (1 << 15))), vu_msg(36),
     vu_msg(24, u32(0) + u32(36) + u32(0) + bytes(36), need_reply=True),
     vu_msg(37, u64(0) + u64(0) + u64(64 << 10) + u64(UADDR) + u64(0), fds=(0,)),
     vu_msg(38, u64(0) + u64(0) + u64(64 << 10) + u64(UADDR) + u64(0))]))
