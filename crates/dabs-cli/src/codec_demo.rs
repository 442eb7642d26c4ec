//! `dabs mp demo`: the codec at work.
//!
//! Until the farm lands this shows the wire codec at work: a message split into buffers,
//! delivered shuffled with duplicates and one corrupted datagram, then reassembled.

use dabs_wire::{
    DecodeError, Header, Kind, MAX_DATAGRAM, Progress, Reassembly, SentTime, Splitter, chunk_size, decode,
    encode,
};
use std::process::ExitCode;

/// Runs the codec demo and prints what happens to each datagram.
pub fn codec_demo() -> ExitCode {
    let message: Vec<u8> = (0..2_000u32).map(|i| (i % 251) as u8).collect();
    let now_ms = dabs_net::unix_ms();
    let header = Header {
        session: 1,
        transaction: 1,
        sent: SentTime::from_unix_millis(now_ms),
        crc: true,
        ..Header::new(Kind::Request, 9)
    };
    let mut wire: Vec<Vec<u8>> = Vec::new();
    let splitter = match Splitter::new(&message, true, 0) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dabs demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (buffer, payload) in splitter {
        let mut out = [0u8; MAX_DATAGRAM];
        match encode(&header, buffer, payload, &mut out) {
            Ok(n) => wire.push(out[..n].to_vec()),
            Err(e) => {
                eprintln!("dabs demo: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("message of {} bytes -> {} datagrams with CRC-8", message.len(), wire.len());
    let mut corrupted = wire[1].clone();
    corrupted[20] ^= 0x10;
    let arrivals = [
        wire[3].clone(),
        corrupted,
        wire[0].clone(),
        wire[3].clone(),
        wire[2].clone(),
        wire[1].clone(),
        wire[4].clone(),
    ];
    let mut reassembly: Option<Reassembly> = None;
    for (i, bytes) in arrivals.iter().enumerate() {
        let d = match decode(bytes) {
            Ok(d) => d,
            Err(e @ DecodeError::CrcMismatch { .. }) => {
                println!("arrival {i}: rejected, {e} -> NAK {}", e.nak_code());
                continue;
            }
            Err(e) => {
                println!("arrival {i}: rejected, {e}");
                continue;
            }
        };
        let b = d.buffer.expect("demo message is multi-buffer");
        let r = match reassembly.as_mut() {
            Some(r) => r,
            None => match Reassembly::new(&d, chunk_size(true, 0), 1 << 20) {
                Ok(r) => reassembly.insert(r),
                Err(e) => {
                    eprintln!("dabs demo: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let progress = r.add(&d);
        println!("arrival {i}: buffer {}/{} -> {progress:?}", b.index + 1, b.total);
        if progress == Ok(Progress::Complete) {
            break;
        }
    }
    match reassembly.map(Reassembly::finish) {
        Some(Ok(m)) if m == message => {
            println!("reassembled {} bytes, identical to what was sent", m.len());
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("dabs demo: reassembly failed");
            ExitCode::FAILURE
        }
    }
}
