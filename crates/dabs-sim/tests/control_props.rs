//! Property test of the farm's control plane over the script harness `dabs_sim::control`:
//! whatever is replayed, flipped, misrouted, forged or thrown at it while the clock moves, a
//! receiver acts on exactly the member's genuine, fresh messages, each once. A failure prints
//! the shrunk script and `PROPTEST_RNG_SEED` replays it.

use dabs_sim::control::{ControlOp, run};
use proptest::prelude::*;

fn op() -> impl Strategy<Value = ControlOp> {
    prop_oneof![
        4 => (any::<u16>(), any::<u8>()).prop_map(|(command, len)| ControlOp::Request { command, len }),
        1 => any::<u8>().prop_map(|back| ControlOp::Late { back }),
        2 => Just(ControlOp::Announce),
        1 => Just(ControlOp::Restart),
        2 => any::<u8>().prop_map(|which| ControlOp::Replay { which }),
        2 => (any::<u8>(), any::<u16>()).prop_map(|(which, bit)| ControlOp::Flip { which, bit }),
        1 => any::<u8>().prop_map(|which| ControlOp::Misroute { which }),
        1 => any::<u16>().prop_map(|command| ControlOp::Forge { command }),
        1 => (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(announce, bytes)| ControlOp::Garbage { announce, bytes }),
        2 => any::<u16>().prop_map(|ms| ControlOp::Advance { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_receiver_acts_on_genuine_fresh_messages_only_and_once(ops in proptest::collection::vec(op(), 1..200)) {
        let report = run(&ops).map_err(|v| TestCaseError::fail(format!("{v:?}")))?;
        let sent = ops.iter().filter(|o| matches!(o, ControlOp::Request { .. })).count() as u64;
        prop_assert_eq!(report.accepted, sent, "every fresh request taken once: {:?}", report);
    }
}

#[test]
fn replays_flips_and_forgeries_are_refused_in_a_fixed_script() {
    let ops = vec![
        ControlOp::Request { command: 0, len: 8 },
        ControlOp::Announce,
        ControlOp::Replay { which: 0 },
        ControlOp::Replay { which: 1 },
        ControlOp::Flip { which: 0, bit: 77 },
        ControlOp::Misroute { which: 0 },
        ControlOp::Forge { command: 0 },
        ControlOp::Late { back: 0 },
        ControlOp::Advance { ms: 40_000 },
        ControlOp::Restart,
        ControlOp::Replay { which: 1 },
        ControlOp::Request { command: 1, len: 0 },
        ControlOp::Announce,
    ];
    let report = run(&ops).expect("no violation");
    assert_eq!((report.accepted, report.announcements), (2, 2));
    assert!(report.refused >= 8 + 6, "{report:?}");
}
