//! Scripts that once broke an endpoint, replayed deterministically through the harness
//! (`dabs_sim::script`). Each reproduced a defect, now fixed; the doc comment says which.

use dabs_sim::script::{Harness, Op, Setup};

/// A session that calls every 10 s on a perfect network: each transaction number comes
/// round again every 255 calls, 42.5 minutes later. The server keeps the record of the
/// number's last use and takes a request as new only when its stamp is newer than that
/// record's, within half an hour (stamps are milliseconds of the hour). 42.5 minutes is
/// "older", so from the 256th call on every request is dropped as a late copy of the old
/// one, never ACKed, and every call fails with `GaveUp`: the session is dead for good
/// (each number is reused 42.5 minutes after its last use). Any steady call interval
/// between about 7 s and 14 s does the same.
#[test]
fn a_session_calling_every_ten_seconds_keeps_working_past_forty_minutes() {
    let mut h = Harness::new(&Setup::default());
    h.apply(&Op::Open { from: 2, to: 0, encrypt: false }).unwrap();
    h.apply(&Op::Flow { ms: 100, answer: true }).unwrap();
    let mut first_failure = None;
    for i in 0..300 {
        h.apply(&Op::Call { from: 2, session: 0, size: 10 }).unwrap();
        h.apply(&Op::Flow { ms: 10_000, answer: true }).unwrap();
        if first_failure.is_none() && h.report().failed > 0 {
            first_failure = Some((i, h.now()));
        }
    }
    h.quiesce().unwrap();
    let r = h.report();
    assert_eq!(
        (r.calls, r.replies, r.failed),
        (300, 300, 0),
        "calls failed on a perfect network, the first by call {first_failure:?} (call number, time): {:?}",
        r.failures
    );
}

/// Found by the `endpoint_script` fuzz target (second run, `-len_control=0`) and minimised
/// with `cargo fuzz tmin`. No datagram is tampered with: endpoint 2 opens encrypted sessions
/// through the group (endpoint 0 accepts encryption, endpoint 1 refuses it), calls, one
/// session is closed, and a later datagram panics in `Endpoint::handle_datagram` at
/// `self.sessions[&sid]` (endpoint.rs, the CRC-flag check): the peer table still maps a
/// session number to a session that is no longer in the session table.
#[test]
fn an_honest_script_with_group_opens_and_a_close_does_not_panic() {
    let setup = Setup {
        crc_off: [false, false, true],
        refuse_encryption: [false, true, false],
        seed: 18446462620070379445,
        hour_offset_ms: 15007743,
    };
    let open = Op::Open { from: 11, to: 11, encrypt: true };
    let flow = Op::Flow { ms: 65535, answer: true };
    let mut ops = vec![
        open.clone(),
        open.clone(),
        Op::Accept { at: 35, open: 35 },
        Op::Accept { at: 35, open: 255 },
        flow.clone(),
        flow.clone(),
        open.clone(),
    ];
    ops.extend(std::iter::repeat_n(flow.clone(), 6));
    ops.extend([
        Op::Call { from: 17, session: 17, size: 4369 },
        Op::Call { from: 17, session: 17, size: 4369 },
        Op::Call { from: 17, session: 255, size: 65535 },
        flow.clone(),
        open.clone(),
        flow.clone(),
        flow.clone(),
        flow.clone(),
        Op::Close { at: 27, session: 0 },
        flow.clone(),
        flow,
        open,
        Op::Call { from: 23, session: 23, size: 5911 },
        Op::Open { from: 0, to: 0, encrypt: false },
    ]);
    if let Err(f) = dabs_sim::script::run(&setup, &ops) {
        panic!("{f}");
    }
}
