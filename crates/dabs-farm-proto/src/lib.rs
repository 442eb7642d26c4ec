//! The farm's shared contracts: what a client application, a server portion and the node
//! runtime must agree on, and nothing of the runtime itself. Both `dabs-node` (the server
//! runtime) and `dabs-sdk` (the application frameworks) depend on this crate, so an
//! application never links the runtime's database, host sampler or metrics registry.
//!
//! - [`shapes`]: the CBOR payloads of the runtime's system commands (`OPEN_SESSION`, `ASSIGN`,
//!   `RESOLVE_VA`) and the encryption offer, as `shared/spec/interop.md` fixes them.
//! - [`seal`]: `FAILOVER` and `DRAIN`, authenticated with the farm secret.
//! - [`portion`]: the host–portion interface: what a starting portion gets and reports.
//! - [`process`]: portions run as programs of their own, over the local socket partition.
//! - [`records`]: node and portion statistics records and the one load signal.
//! - [`keys`]: keys derived from the farm secret, one per purpose.
//! - [`control`]: the authenticated control plane: MACs on announcements, node-to-node
//!   commands and their answers, and replay state.
//! - [`status`]: status objects, figures a portion publishes for its application's policy.
//! - [`timeouts`]: time-outs both sides must read alike.
//! - [`jobs`]: the job-execution service between nodes, and the compute servers' figures.
//! - [`modules`]: client modules: the published package, signatures, device profiles and
//!   where a mutable module runs.

pub mod control;
pub mod jobs;
pub mod keys;
pub mod modules;
pub mod portion;
pub mod process;
pub mod records;
pub mod seal;
pub mod shapes;
pub mod status;
pub mod timeouts;
