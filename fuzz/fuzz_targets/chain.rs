#![no_main]
// Target `chain`: see src/fuzzing/ and docs/development.md, "Fuzzing".
libfuzzer_sys::fuzz_target!(|data: &[u8]| vhost_user_scsi::fuzzing::chain::run(data));
