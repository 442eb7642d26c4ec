//! The calculator's client modules (R-CL): what the farm publishes for its client portions,
//! and [`WasmIntegerOps`], `IntegerOps` run from its downloaded, verified module in the
//! client's sandbox.
//!
//! | module | kind | classes |
//! |---|---|---|
//! | `channel-udp` | first (channel udp) | native, embedded |
//! | `channel-tcp` | add-on (channel tcp) | native, embedded |
//! | `channel-ws` | add-on (channel ws) | native |
//! | `integer-ops` | mutable: 1 CPU, 64 MiB, no floating point | native, embedded |
//! | `grouping` | feature add-on: results with digits grouped in threes | native, embedded |
//! | `floating-point-ops` | peer-locked: never sent | — |

use crate::IntegerOps;
use dabs_farm_proto::modules::{ModuleKind, ModuleSource, Needs};
use dabs_sdk::PartitionError;
use std::sync::Arc;

/// The mutable module's name.
pub const INTEGER_OPS: &str = "integer-ops";
/// The feature add-on that groups a result's digits.
pub const GROUPING: &str = "grouping";

const ALLOC: &str = include_str!("../modules/alloc.wat.part");

/// Assembles one of the module texts, with the shared allocator put in.
fn assemble(text: &str) -> Arc<[u8]> {
    let text = text.replace(";;ALLOC", ALLOC);
    // The texts are part of this crate: one that does not assemble is a build defect, caught by
    // the tests below before any node runs it.
    wat::parse_str(&text).unwrap_or_else(|e| panic!("a calculator module does not assemble: {e}")).into()
}

/// A return channel's module: its policy, as the JSON its `run` answers.
fn channel(
    name: &str,
    channel: &str,
    kind: ModuleKind,
    open_timeout_ms: u32,
    classes: &[&str],
) -> ModuleSource {
    let policy = format!(r#"{{"channel":"{channel}","open_timeout_ms":{open_timeout_ms},"attempts":2}}"#);
    let text = include_str!("../modules/channel.wat")
        .replace("POLICY", &policy.replace('"', "\\\""))
        .replace("LEN", &policy.len().to_string());
    ModuleSource {
        name: name.into(),
        kind,
        channel: Some(channel.into()),
        classes: classes.iter().map(|c| (*c).to_owned()).collect(),
        needs: Needs::default(),
        wasm: assemble(&text),
    }
}

/// Everything the calculator publishes for its clients.
pub fn package() -> Vec<ModuleSource> {
    vec![
        // UDP is tried first and answers within a few round trips where it gets through.
        channel("channel-udp", "udp", ModuleKind::First, 1500, &["native", "embedded"]),
        channel("channel-tcp", "tcp", ModuleKind::Addon, 3000, &["native", "embedded"]),
        channel("channel-ws", "ws", ModuleKind::Addon, 3000, &["native"]),
        ModuleSource {
            name: INTEGER_OPS.into(),
            kind: ModuleKind::Mutable,
            channel: None,
            classes: vec!["native".into(), "embedded".into()],
            needs: Needs { cpus: 1, memory_mb: 64, float: false },
            wasm: assemble(include_str!("../modules/integer_ops.wat")),
        },
        ModuleSource {
            name: GROUPING.into(),
            kind: ModuleKind::Addon,
            channel: None,
            classes: vec!["native".into(), "embedded".into()],
            needs: Needs::default(),
            wasm: assemble(include_str!("../modules/grouping.wat")),
        },
        ModuleSource {
            name: "floating-point-ops".into(),
            kind: ModuleKind::PeerLocked,
            channel: None,
            classes: Vec::new(),
            needs: Needs::default(),
            wasm: assemble(include_str!("../modules/floating_point_ops.wat")),
        },
    ]
}

/// `n` written by the `grouping` feature add-on (`module`, verified), in the sandbox.
pub fn group_digits(module: &dabs_sandbox::Module, n: i64) -> Result<String, String> {
    let limits = dabs_sandbox::Limits { fuel: 100_000, memory_bytes: 1 << 20, output_bytes: 64 };
    let out = module.run(&n.to_le_bytes(), &limits).map_err(|e| format!("{GROUPING} module: {e}"))?;
    String::from_utf8(out).map_err(|_| format!("{GROUPING} module answered bytes that are not text"))
}

/// `IntegerOps` run by its module in the client's sandbox: each call a fresh instance under
/// the sandbox's fuel and memory limits, so a module cannot harm the client.
#[derive(Clone, Debug)]
pub struct WasmIntegerOps {
    module: dabs_sandbox::Module,
    limits: dabs_sandbox::Limits,
}

impl WasmIntegerOps {
    /// The module from `wasm`, which the caller has verified against the farm's signature.
    pub fn new(wasm: &[u8]) -> Result<Self, dabs_sandbox::TaskError> {
        // A calculation needs a few hundred instructions and one page of memory.
        let limits = dabs_sandbox::Limits { fuel: 100_000, memory_bytes: 1 << 20, output_bytes: 64 };
        Ok(Self { module: dabs_sandbox::Module::new(wasm)?, limits })
    }

    fn op(&self, op: u8, a: i64, b: i64, sign: &str) -> Result<i64, PartitionError> {
        let mut input = [0u8; 17];
        input[0] = op;
        input[1..9].copy_from_slice(&a.to_le_bytes());
        input[9..].copy_from_slice(&b.to_le_bytes());
        let out = self
            .module
            .run(&input, &self.limits)
            .map_err(|e| PartitionError::op("module_failed", format!("integer-ops module: {e}")))?;
        let (status, value) = match out.as_slice() {
            [status, rest @ ..] if rest.len() == 8 => {
                (*status, i64::from_le_bytes(rest.try_into().unwrap_or_default()))
            }
            _ => {
                return Err(PartitionError::op(
                    "module_failed",
                    format!("integer-ops answered {} bytes", out.len()),
                ));
            }
        };
        match status {
            0 => Ok(value),
            1 => Err(crate::by_zero(a)),
            2 => Err(crate::overflow(sign, a, b)),
            _ => Err(PartitionError::op("bad_operands", format!("integer-ops refused {a} {sign} {b}"))),
        }
    }
}

impl IntegerOps for WasmIntegerOps {
    async fn add(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        self.op(0, a, b, "+")
    }
    async fn sub(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        self.op(1, a, b, "-")
    }
    async fn mul(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        self.op(2, a, b, "*")
    }
    async fn div(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        self.op(3, a, b, "/")
    }
    async fn rem(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        self.op(4, a, b, "%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalIntegerOps;
    use proptest::prelude::*;

    fn wasm_ops() -> WasmIntegerOps {
        let m = package().into_iter().find(|m| m.name == INTEGER_OPS).expect("published");
        WasmIntegerOps::new(&m.wasm).expect("valid module")
    }

    async fn both(op: u8, a: i64, b: i64) -> (Result<i64, PartitionError>, Result<i64, PartitionError>) {
        let (w, l) = (wasm_ops(), LocalIntegerOps);
        match op {
            0 => (w.add(a, b).await, l.add(a, b).await),
            1 => (w.sub(a, b).await, l.sub(a, b).await),
            2 => (w.mul(a, b).await, l.mul(a, b).await),
            3 => (w.div(a, b).await, l.div(a, b).await),
            _ => (w.rem(a, b).await, l.rem(a, b).await),
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    #[test]
    fn the_module_agrees_with_the_native_operations_at_the_edges() {
        let edges =
            [0, 1, -1, 2, -2, 7, -7, i64::MAX, i64::MIN, i64::MAX - 1, i64::MIN + 1, 1 << 32, -(1 << 32)];
        for op in 0..5u8 {
            for a in edges {
                for b in edges {
                    let (w, l) = run(both(op, a, b));
                    assert_eq!(w, l, "op {op} on {a}, {b}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn the_module_agrees_with_the_native_operations(op in 0..5u8, a: i64, b: i64) {
            let (w, l) = run(both(op, a, b));
            prop_assert_eq!(w, l);
        }
    }

    #[test]
    fn the_grouping_add_on_groups_every_integer_as_rust_would() {
        let m = package().into_iter().find(|m| m.name == GROUPING).expect("published");
        let module = dabs_sandbox::Module::new(&m.wasm).expect("valid");
        let rust = |n: i64| {
            let digits = n.unsigned_abs().to_string();
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(c);
            }
            if n < 0 { format!("-{out}") } else { out }
        };
        for n in [0, 7, -7, 999, 1000, -1000, 1_234_567, i64::MAX, i64::MIN, -999_999] {
            assert_eq!(group_digits(&module, n), Ok(rust(n)), "{n}");
        }
        assert_eq!(group_digits(&module, 42_000), Ok("42,000".into()));
    }

    #[test]
    fn every_module_assembles_and_the_channels_answer_their_policy() {
        let limits = dabs_sandbox::Limits::default();
        for m in package() {
            let module = dabs_sandbox::Module::new(&m.wasm).unwrap_or_else(|e| panic!("{}: {e}", m.name));
            if let Some(channel) = &m.channel {
                let out = module.run(&[], &limits).expect("policy");
                let text = String::from_utf8(out).expect("text");
                assert!(text.contains(&format!(r#""channel":"{channel}""#)), "{text}");
            }
        }
        // The peer-locked float module works (the server could run it), but is never a client's.
        let floats = package().into_iter().find(|m| m.kind == ModuleKind::PeerLocked).expect("one");
        let module = dabs_sandbox::Module::new(&floats.wasm).expect("valid");
        let mut input = [0u8; 17];
        input[0] = 3;
        input[1..9].copy_from_slice(&7.0f64.to_le_bytes());
        input[9..].copy_from_slice(&2.0f64.to_le_bytes());
        let out = module.run(&input, &limits).expect("runs");
        assert_eq!((out[0], f64::from_le_bytes(out[1..].try_into().unwrap())), (0, 3.5));
        input[9..].copy_from_slice(&0.0f64.to_le_bytes());
        assert_eq!(module.run(&input, &limits).expect("runs")[0], 1, "division by zero");
        assert_eq!(module.run(&[1, 2], &limits).expect("runs")[0], 3, "bad operands");
    }
}
