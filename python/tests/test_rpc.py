"""The JSON-RPC client against the real daemon and a fake server."""

import time

import pytest

from vhost_user_scsi import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NOT_FOUND,
    RpcClient,
    RpcConnectionError,
    RpcError,
    RpcProtocolError,
    RpcTimeoutError,
    VhostUserScsiError,
)


def test_version(daemon):
    assert RpcClient(daemon.rpc_socket).version()["name"] == "vhost-user-scsi"


def test_unknown_method_is_an_rpc_error(daemon):
    with pytest.raises(RpcError) as info:
        RpcClient(daemon.rpc_socket).call("no_such_method")
    e = info.value
    assert e.code == METHOD_NOT_FOUND
    assert "no_such_method" in e.message and str(e) == e.message
    assert e.method == "no_such_method" and e.data is None
    assert isinstance(e, VhostUserScsiError)


def test_invalid_params_carry_the_daemons_message(daemon):
    with pytest.raises(RpcError) as info:
        RpcClient(daemon.rpc_socket).call("controller_create", {"name": "x"})
    assert info.value.code == INVALID_PARAMS
    assert "missing field `socket`" in info.value.message


def test_too_large_request_is_an_rpc_error(daemon):
    with pytest.raises(RpcError) as info:
        RpcClient(daemon.rpc_socket).call("version", {"pad": "x" * (2 << 20)})
    assert info.value.code == INVALID_REQUEST


def test_not_found(daemon):
    with pytest.raises(RpcError) as info:
        RpcClient(daemon.rpc_socket).lun_remove("nope", 0)
    assert info.value.code == NOT_FOUND
    assert "nope" in str(info.value)


def test_no_daemon_is_a_connection_error(workdir):
    client = RpcClient(str(workdir / "absent.sock"), timeout=1.0)
    with pytest.raises(RpcConnectionError) as info:
        client.version()
    assert not isinstance(info.value, RpcError)
    assert "absent.sock" in str(info.value)


def test_ids_increment_and_none_params_are_left_out(fake_server):
    server = fake_server(lambda r: {"jsonrpc": "2.0", "id": r["id"], "result": True})
    client = RpcClient(server.path)
    client.controller_delete("a")
    client.lun_add("a", "/x.img")
    client.controller_list()
    assert [r["id"] for r in server.requests] == [1, 2, 3]
    assert server.requests[0] == {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "controller_delete",
        "params": {"name": "a"},
    }
    assert server.requests[1]["params"] == {"controller": "a", "path": "/x.img"}
    assert "params" not in server.requests[2]


def test_error_data_is_kept(fake_server):
    error = {"code": -32004, "message": "boom", "data": {"errno": 5}}
    server = fake_server(lambda r: {"jsonrpc": "2.0", "id": r["id"], "error": error})
    with pytest.raises(RpcError) as info:
        RpcClient(server.path).version()
    assert (info.value.code, info.value.message, info.value.data) == (-32004, "boom", {"errno": 5})


def test_timeout(fake_server):
    server = fake_server(lambda r: None)
    start = time.monotonic()
    with pytest.raises(RpcTimeoutError) as info:
        RpcClient(server.path, timeout=0.3).version()
    assert time.monotonic() - start < 2
    assert isinstance(info.value, RpcConnectionError)


def test_closed_without_answer(fake_server):
    server = fake_server(lambda r: b"")
    with pytest.raises(RpcConnectionError, match="closed the connection"):
        RpcClient(server.path, timeout=2).version()


@pytest.mark.parametrize(
    "answer",
    [
        b"not json\n",
        b"[]\n",
        b'{"jsonrpc":"2.0","id":99,"result":true}\n',
        b'{"jsonrpc":"1.0","id":1,"result":true}\n',
        b'{"jsonrpc":"2.0","id":1}\n',
        b'{"jsonrpc":"2.0","id":1,"error":"bad"}\n',
    ],
)
def test_protocol_errors(fake_server, answer):
    server = fake_server(lambda r: answer)
    with pytest.raises(RpcProtocolError):
        RpcClient(server.path, timeout=2).version()


def test_answer_in_pieces(fake_server):
    big = "x" * 200000
    server = fake_server(lambda r: {"jsonrpc": "2.0", "id": r["id"], "result": big})
    assert RpcClient(server.path).call("anything") == big
