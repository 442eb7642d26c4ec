//! The calculator of the original documents (system.md §10), wire shapes as in
//! `shared/spec/interop.md`.
//!
//! - [`IntegerOps`] is **mutable**: [`LocalIntegerOps`] runs it in the client when the device
//!   can, [`IntClientPart`] on the server otherwise, behind the same signature.
//! - [`FloatingPointOps`] always runs on the server ([`FltPtClientPart`] on the client).
//! - [`CalcServer`] is the server portion (`CALC_ServerPart` + `CALC_Server`).
//! - [`CalcClient`] is the client portion (`CALC_Client`).

pub mod modules;

use dabs_farm_proto::portion::PortionFactory;
use dabs_sdk::{FarmClient, Handled, PartitionError, Placed, PortionFactoryFn, ServerPortion};
use dabs_wire::NakCode;
use std::sync::Arc;

/// The application's name on the farm.
pub const APP: &str = "calc";

dabs_sdk::partition! {
    /// Integer operations (commands 256–260): add, subtract, multiply, truncating divide, modulus.
    pub trait IntegerOps via IntClientPart, serve serve_integer_ops {
        /// a + b
        fn add(a: i64, b: i64) -> i64 = 256;
        /// a − b
        fn sub(a: i64, b: i64) -> i64 = 257;
        /// a × b
        fn mul(a: i64, b: i64) -> i64 = 258;
        /// a ÷ b, truncating toward zero
        fn div(a: i64, b: i64) -> i64 = 259;
        /// a mod b (sign of a, as truncating division leaves it)
        fn rem(a: i64, b: i64) -> i64 = 260;
    }
}

dabs_sdk::partition! {
    /// Floating-point operations (commands 272–275).
    pub trait FloatingPointOps via FltPtClientPart, serve serve_float_ops {
        /// x + y
        fn add(x: f64, y: f64) -> f64 = 272;
        /// x − y
        fn sub(x: f64, y: f64) -> f64 = 273;
        /// x × y
        fn mul(x: f64, y: f64) -> f64 = 274;
        /// x ÷ y
        fn div(x: f64, y: f64) -> f64 = 275;
    }
}

fn overflow(op: &str, a: impl std::fmt::Display, b: impl std::fmt::Display) -> PartitionError {
    PartitionError::op("overflow", format!("{a} {op} {b} does not fit a signed 64-bit integer"))
}

fn by_zero(a: impl std::fmt::Display) -> PartitionError {
    PartitionError::op("division_by_zero", format!("cannot divide {a} by zero"))
}

/// `IntegerOps` computed where it is called.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalIntegerOps;

impl IntegerOps for LocalIntegerOps {
    async fn add(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        a.checked_add(b).ok_or_else(|| overflow("+", a, b))
    }
    async fn sub(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        a.checked_sub(b).ok_or_else(|| overflow("-", a, b))
    }
    async fn mul(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        a.checked_mul(b).ok_or_else(|| overflow("*", a, b))
    }
    async fn div(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        if b == 0 {
            return Err(by_zero(a));
        }
        a.checked_div(b).ok_or_else(|| overflow("/", a, b))
    }
    async fn rem(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        if b == 0 {
            return Err(by_zero(a));
        }
        a.checked_rem(b).ok_or_else(|| overflow("%", a, b))
    }
}

/// `FloatingPointOps` computed on the server.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalFloatingPointOps;

fn finite(op: &str, x: f64, y: f64, r: f64) -> Result<f64, PartitionError> {
    if r.is_finite() || !x.is_finite() || !y.is_finite() {
        Ok(r)
    } else {
        Err(PartitionError::op("overflow", format!("{x} {op} {y} overflows a 64-bit float")))
    }
}

impl FloatingPointOps for LocalFloatingPointOps {
    async fn add(&self, x: f64, y: f64) -> Result<f64, PartitionError> {
        finite("+", x, y, x + y)
    }
    async fn sub(&self, x: f64, y: f64) -> Result<f64, PartitionError> {
        finite("-", x, y, x - y)
    }
    async fn mul(&self, x: f64, y: f64) -> Result<f64, PartitionError> {
        finite("*", x, y, x * y)
    }
    async fn div(&self, x: f64, y: f64) -> Result<f64, PartitionError> {
        if y == 0.0 {
            return Err(by_zero(x));
        }
        finite("/", x, y, x / y)
    }
}

/// The server portion: takes requests from many clients and runs them.
#[derive(Default)]
pub struct CalcServer {
    handled: u64,
}

impl ServerPortion for CalcServer {
    async fn handle(&mut self, command: u16, payload: Vec<u8>) -> Handled {
        self.handled += 1;
        if let Some(r) = serve_integer_ops(&LocalIntegerOps, command, &payload).await {
            return Handled::Reply(r);
        }
        if let Some(r) = serve_float_ops(&LocalFloatingPointOps, command, &payload).await {
            return Handled::Reply(r);
        }
        Handled::Reject(NakCode::UnknownCommand, format!("calc has no command {command}"))
    }

    fn state(&self) -> String {
        format!("running, {} requests handled", self.handled)
    }
}

/// The factory a node uses to start calculator portions: a vertical split, one worker per CPU,
/// publishing its pending operations as the status object `pending` (seed 003).
pub fn factory() -> Arc<dyn PortionFactory> {
    Arc::new(
        PortionFactoryFn::new(APP, CalcServer::default)
            .vertical_split()
            .with_status("pending", dabs_sdk::server::pending_operations)
            .with_modules(modules::package()),
    )
}

/// What a client device can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Can run the integer module itself.
    Fat,
    /// Runs nothing it need not: every operation goes to the server.
    Thin,
}

/// `IntegerOps` run in the client: natively, or from the farm's verified module in the
/// client's sandbox.
#[derive(Clone, Debug)]
pub enum IntsHere {
    /// Compiled into the client.
    Native(LocalIntegerOps),
    /// The downloaded `integer-ops` module, in the sandbox.
    Sandboxed(modules::WasmIntegerOps),
}

impl IntegerOps for IntsHere {
    async fn add(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        match self {
            IntsHere::Native(n) => n.add(a, b).await,
            IntsHere::Sandboxed(w) => w.add(a, b).await,
        }
    }
    async fn sub(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        match self {
            IntsHere::Native(n) => n.sub(a, b).await,
            IntsHere::Sandboxed(w) => w.sub(a, b).await,
        }
    }
    async fn mul(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        match self {
            IntsHere::Native(n) => n.mul(a, b).await,
            IntsHere::Sandboxed(w) => w.mul(a, b).await,
        }
    }
    async fn div(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        match self {
            IntsHere::Native(n) => n.div(a, b).await,
            IntsHere::Sandboxed(w) => w.div(a, b).await,
        }
    }
    async fn rem(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        match self {
            IntsHere::Native(n) => n.rem(a, b).await,
            IntsHere::Sandboxed(w) => w.rem(a, b).await,
        }
    }
}

/// The client portion: decides integer vs floating point and calls the right partition.
pub struct CalcClient {
    /// Integer operations, local or remote by profile.
    pub ints: Placed<IntsHere, IntClientPart>,
    /// Floating-point operations, always remote.
    pub floats: FltPtClientPart,
}

/// An operation from the command line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Operands {
    /// Both operands are integers.
    Int(i64, i64),
    /// At least one is not.
    Float(f64, f64),
}

impl Operands {
    /// Integers when both parse as integers, else floats; an error names the bad operand.
    pub fn parse(a: &str, b: &str) -> Result<Self, String> {
        match (a.parse::<i64>(), b.parse::<i64>()) {
            (Ok(a), Ok(b)) => Ok(Operands::Int(a, b)),
            _ => {
                let f = |s: &str| s.parse::<f64>().map_err(|_| format!("{s:?} is not a number"));
                Ok(Operands::Float(f(a)?, f(b)?))
            }
        }
    }
}

/// A result for display: an integer or a float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// Integer result.
    Int(i64),
    /// Floating-point result.
    Float(f64),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
        }
    }
}

impl CalcClient {
    /// A client over `farm` with the integer module placed by `profile`.
    pub fn new(farm: Arc<FarmClient>, profile: Profile) -> Self {
        let ints = match profile {
            Profile::Fat => Placed::Local(IntsHere::Native(LocalIntegerOps)),
            Profile::Thin => Placed::Network(IntClientPart::new(farm.clone())),
        };
        Self { ints, floats: FltPtClientPart::new(farm) }
    }

    /// A client whose integer operations the farm placed (R-CL-2): in the sandbox when it
    /// sent `module` (placed here, verified), over the network otherwise.
    pub fn placed(farm: Arc<FarmClient>, module: Option<modules::WasmIntegerOps>) -> Self {
        let ints = match module {
            Some(m) => Placed::Local(IntsHere::Sandboxed(m)),
            None => Placed::Network(IntClientPart::new(farm.clone())),
        };
        Self { ints, floats: FltPtClientPart::new(farm) }
    }

    /// Computes `a OP b` with OP one of `+ - * x / %`.
    pub async fn compute(&self, op: &str, operands: Operands) -> Result<Value, PartitionError> {
        match operands {
            Operands::Int(a, b) => {
                let r = match op {
                    "+" => self.ints.add(a, b).await,
                    "-" => self.ints.sub(a, b).await,
                    "*" | "x" => self.ints.mul(a, b).await,
                    "/" => self.ints.div(a, b).await,
                    "%" => self.ints.rem(a, b).await,
                    _ => return Err(PartitionError::op("bad_operands", format!("unknown operator {op:?}"))),
                };
                r.map(Value::Int)
            }
            Operands::Float(x, y) => {
                let r = match op {
                    "+" => self.floats.add(x, y).await,
                    "-" => self.floats.sub(x, y).await,
                    "*" | "x" => self.floats.mul(x, y).await,
                    "/" => self.floats.div(x, y).await,
                    _ => {
                        return Err(PartitionError::op(
                            "bad_operands",
                            format!("operator {op:?} is not defined for floats"),
                        ));
                    }
                };
                r.map(Value::Float)
            }
        }
    }
}

/// The slow calculator's application name.
pub const SLOW_APP: &str = "slowcalc";

/// The calculator with a deliberately slow critical section, for the ramp demo: every request
/// holds the portion's single `db` permit for `work`, so a growing crowd of clients starves
/// the portion the way a real shared resource would, and the lock's time-outs tell the farm.
pub struct SlowCalcFactory {
    /// Time spent inside the critical section per request.
    pub work: std::time::Duration,
}

struct SlowCalc {
    lock: Arc<dabs_sdk::sync::TimedSemaphore>,
    work: std::time::Duration,
    inner: CalcServer,
}

impl ServerPortion for SlowCalc {
    async fn handle(&mut self, command: u16, payload: Vec<u8>) -> Handled {
        // A time-out is a signal to the farm (reported by the semaphore), not a failure:
        // the request keeps waiting its turn.
        let _permit = loop {
            if let Ok(p) = self.lock.acquire().await {
                break p;
            }
        };
        tokio::time::sleep(self.work).await;
        self.inner.handle(command, payload).await
    }
}

impl PortionFactory for SlowCalcFactory {
    fn app(&self) -> &str {
        SLOW_APP
    }

    fn spawn(&self, ctx: dabs_farm_proto::portion::PortionContext) {
        let reporter = dabs_sdk::sync::StarvationReporter::from_context(&ctx);
        let lock = Arc::new(dabs_sdk::sync::TimedSemaphore::new("db", 1, reporter));
        // More workers than permits, like a server whose thread pool outnumbers its database
        // connections: requests then wait at the lock, where the time-out can see them.
        let workers = 16;
        let portions = (0..workers)
            .map(|_| SlowCalc { lock: lock.clone(), work: self.work, inner: CalcServer::default() })
            .collect();
        tokio::spawn(dabs_sdk::server::run_workers(portions, ctx));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_and_served_integer_ops_agree() {
        let cases: [(u16, i64, i64); 8] = [
            (256, 7, 2),
            (257, 7, 2),
            (258, 7, 2),
            (259, 7, 2),
            (259, -7, 2),
            (260, -7, 2),
            (259, 1, 0),
            (256, i64::MAX, 1),
        ];
        for (cmd, a, b) in cases {
            let served =
                serve_integer_ops(&LocalIntegerOps, cmd, &dabs_sdk::encode_args(&(a, b))).await.unwrap();
            let local = match cmd {
                256 => LocalIntegerOps.add(a, b).await,
                257 => LocalIntegerOps.sub(a, b).await,
                258 => LocalIntegerOps.mul(a, b).await,
                259 => LocalIntegerOps.div(a, b).await,
                _ => LocalIntegerOps.rem(a, b).await,
            };
            assert_eq!(dabs_sdk::decode_reply::<i64>(&served), local, "command {cmd} on {a}, {b}");
        }
        assert_eq!(LocalIntegerOps.div(-7, 2).await, Ok(-3));
        assert_eq!(LocalIntegerOps.rem(-7, 2).await, Ok(-1));
        assert!(
            matches!(LocalIntegerOps.div(i64::MIN, -1).await, Err(PartitionError::Op { code, .. }) if code == "overflow")
        );
    }

    #[tokio::test]
    async fn errors_are_replies_with_codes() {
        let code = |r: Vec<u8>| match dabs_sdk::decode_reply::<f64>(&r) {
            Err(PartitionError::Op { code, .. }) => code,
            other => panic!("{other:?}"),
        };
        let bad = serve_integer_ops(&LocalIntegerOps, 256, &dabs_sdk::encode_args(&(1.5, 2))).await.unwrap();
        assert_eq!(code(bad), "bad_operands");
        let short = serve_integer_ops(&LocalIntegerOps, 256, &dabs_sdk::encode_args(&(1,))).await.unwrap();
        assert_eq!(code(short), "bad_operands");
        let long =
            serve_integer_ops(&LocalIntegerOps, 256, &dabs_sdk::encode_args(&(1, 2, 3))).await.unwrap();
        assert_eq!(code(long), "bad_operands");
        let not_array = serve_integer_ops(&LocalIntegerOps, 256, &dabs_sdk::encode_args(&7)).await.unwrap();
        assert_eq!(code(not_array), "bad_operands");
        let zero =
            serve_float_ops(&LocalFloatingPointOps, 275, &dabs_sdk::encode_args(&(1.0, 0.0))).await.unwrap();
        assert_eq!(code(zero), "division_by_zero");
        let big = serve_float_ops(&LocalFloatingPointOps, 274, &dabs_sdk::encode_args(&(1e308, 10.0)))
            .await
            .unwrap();
        assert_eq!(code(big), "overflow");
        let ok =
            serve_float_ops(&LocalFloatingPointOps, 275, &dabs_sdk::encode_args(&(7.0, 2.0))).await.unwrap();
        assert_eq!(dabs_sdk::decode_reply::<f64>(&ok), Ok(3.5));
        assert_eq!(Operands::parse("7", "2"), Ok(Operands::Int(7, 2)));
        assert_eq!(Operands::parse("7", "2.5"), Ok(Operands::Float(7.0, 2.5)));
        assert!(Operands::parse("7", "x").is_err());
    }
}
