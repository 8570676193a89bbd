//! The management plane against the daemon binary (issue 5): controllers
//! and LUNs created, changed and removed over JSON-RPC while a frontend
//! (playing the guest) runs I/O.

mod common;

use common::Daemon;
use serde_json::json;

#[test]
fn controller_created_over_rpc_serves_io() {
    let mut d = Daemon::start_rpc(&[]);
    let img = common::image(d.dir.path(), "a.img", 8 << 20);
    let mut rpc = d.rpc();
    let sock = d.path("a.sock");
    rpc.call(
        "controller_create",
        Some(json!({"name": "a", "socket": sock, "num_queues": 2})),
    )
    .unwrap();
    rpc.call("lun_add", Some(json!({"controller": "a", "path": img})))
        .unwrap();
    let fe = d.connect_to("a.sock", 2);
    let data = common::pattern(3, 1, 4096);
    let w = fe
        .command(
            0,
            0,
            &vhost_user_scsi::frontend::cdb::write10(3, 8, false),
            vhost_user_scsi::frontend::DataDir::ToDevice(&data),
        )
        .unwrap();
    assert_eq!(w.status, 0);
    drop(fe);
    assert_eq!(d.stop(), Some(0));
    assert!(!sock.exists());
}
