#![no_main]
// Target `vhost_user`: see src/fuzzing/ and docs/development.md, "Fuzzing".

#[global_allocator]
static ALLOC: vhost_user_scsi::fuzzing::LimitedAlloc = vhost_user_scsi::fuzzing::LimitedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| vhost_user_scsi::fuzzing::vhost_user::run(data));
