//! Arbitrary submission queue entries into command parsing (admin, fabrics and NVM I/O; see
//! `codec::pdu::fuzz::command`). Parsed commands must rebuild to SQEs that parse the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    codec::pdu::fuzz::command(data);
});
