//! Any bytes: decode must not panic; what decodes must re-encode identically and feed
//! reassembly without panicking.
#![no_main]

use dabs_wire::{Reassembly, decode, encode, MAX_DATAGRAM, RawHeader, NakPayload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = RawHeader::peek(data);
    let _ = NakPayload::parse(data);
    if let Ok(d) = decode(data) {
        let mut out = [0u8; MAX_DATAGRAM];
        let n = encode(&d.header, d.buffer, d.payload, &mut out).expect("decoded datagram re-encodes");
        assert_eq!(&out[..n], data);
        if d.buffer.is_some() {
            if let Ok(mut r) = Reassembly::new(&d, d.payload.len().max(1), 1 << 16) {
                let _ = r.add(&d);
            }
        }
    }
});
