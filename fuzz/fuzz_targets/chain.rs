#![no_main]
// Target `chain`: see src/fuzzing/ and docs/development.md, "Fuzzing".

#[global_allocator]
static ALLOC: vhost_user_scsi::fuzzing::LimitedAlloc = vhost_user_scsi::fuzzing::LimitedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| vhost_user_scsi::fuzzing::chain::run(data));
