//! Arbitrary bytes into the streaming NVMe/TCP PDU decoder, both roles, digests and alignment
//! chosen by the first byte (see `codec::pdu::fuzz::pdu_stream`). Every decoded PDU must
//! re-encode and decode back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    codec::pdu::fuzz::pdu_stream(data);
});
