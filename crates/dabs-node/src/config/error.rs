//! Why a configuration was refused, typed: each variant names the key (as a dotted path such
//! as `farm.group` or `app[1].name`), the offending value, and what is allowed, so an operator
//! can fix the file without reading code. [`ConfigError::location`] says where.

use std::fmt;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use super::defaults::MIN_SECRET_BYTES;

/// The file and, when there is offending text, its 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line of the offending text, when there is one.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending text, when there is one.
    pub column: Option<usize>,
}

/// Written `FILE`, `FILE:LINE` or `FILE:LINE:COLUMN`.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// Why a configuration was refused. Displayed as `FILE:LINE:COLUMN: KEY: problem (expected …)`.
///
/// In every variant, `at` is where the problem is and `key` the dotted path of the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("{at}: cannot read the configuration file: {source}")]
    Read {
        /// The file; no line.
        at: Location,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The text is not TOML.
    #[error("{at}: invalid TOML: {message}")]
    Syntax {
        /// Where the parser stopped.
        at: Location,
        /// The parser's reason, with the offending text when it is short.
        message: String,
    },
    /// A required section (`[farm]`, `[node]`) is absent.
    #[error("{at}: [{section}]: required section is missing")]
    MissingSection {
        /// The file; no line.
        at: Location,
        /// The section's name.
        section: String,
    },
    /// A required key is absent from its table.
    #[error("{at}: {key}: required key is missing")]
    MissingKey {
        /// The table that lacks it.
        at: Location,
        /// The missing key.
        key: String,
    },
    /// A key that the file format does not have (often a typo); the message lists the keys
    /// the table allows.
    #[error("{at}: {key}: {message}")]
    UnknownKey {
        /// The key.
        at: Location,
        /// The key.
        key: String,
        /// `unknown key `…`, expected one of …`.
        message: String,
    },
    /// A value of the wrong type, e.g. a string where a number is expected.
    #[error("{at}: {key}: {message}")]
    WrongType {
        /// The value.
        at: Location,
        /// The key.
        key: String,
        /// What was found and what is expected.
        message: String,
    },
    /// The file's layout is wrong in a way that no single key can be blamed for.
    #[error("{at}: {message}")]
    Layout {
        /// Where, when known.
        at: Location,
        /// What is wrong and what is expected.
        message: String,
    },
    /// A farm, node, application, service, class or sub-group name with characters other than
    /// A-Z a-z 0-9 _ -, or empty.
    #[error("{at}: {key}: {} (expected one or more of A-Z a-z 0-9 _ -)", name_problem(name, *bad))]
    InvalidName {
        /// The value.
        at: Location,
        /// The key.
        key: String,
        /// The name as written.
        name: String,
        /// Its first disallowed character; `None` when the name is empty.
        bad: Option<char>,
    },
    /// An integer outside its inclusive range.
    #[error("{at}: {key}: {value} is out of range (expected {min}..={max})")]
    OutOfRange {
        /// The value.
        at: Location,
        /// The key.
        key: String,
        /// The value as written.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// A duration, in milliseconds, outside its inclusive range.
    #[error("{at}: {key}: {value} is out of range (expected {min}..={max} milliseconds)")]
    MsOutOfRange {
        /// The value.
        at: Location,
        /// The key.
        key: String,
        /// The value as written, milliseconds.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// A CPU percentage not in 0 < x <= 100 (NaN included).
    #[error("{at}: {key}: {value} is out of range (expected 0 < x <= 100)")]
    PercentOutOfRange {
        /// The value.
        at: Location,
        /// The key.
        key: String,
        /// The value as written.
        value: f64,
    },
    /// `node.lease_ms` (given, or the default) is not more than twice the announce interval,
    /// or is longer than the maximum.
    #[error(
        "{at}: node.lease_ms: {}{lease_ms} is out of range (expected more than \
         2 * node.announce_interval_ms = {twice_announce_ms} and at most {max_ms}){}",
        if *defaulted { "the default " } else { "" },
        if *defaulted { "; set lease_ms" } else { "" }
    )]
    LeaseOutOfRange {
        /// `lease_ms`, or `announce_interval_ms` when the default lease is what clashes.
        at: Location,
        /// The lease in force, milliseconds.
        lease_ms: u64,
        /// Twice the announce interval; the lease must be longer.
        twice_announce_ms: u64,
        /// Longest allowed lease.
        max_ms: u64,
        /// Whether `lease_ms` was left out, so the default clashes with the interval.
        defaulted: bool,
    },
    /// The latency low-water mark is not below the high-water mark.
    #[error(
        "{at}: latency.low_water_ms: {low_water_ms} is not below latency.max_message_latency_ms = \
         {max_message_latency_ms} (expected low_water_ms < max_message_latency_ms)"
    )]
    LowWaterNotBelowMax {
        /// `low_water_ms`, or `max_message_latency_ms` when only that was set.
        at: Location,
        /// The low-water mark in force, milliseconds.
        low_water_ms: u64,
        /// The high-water mark in force, milliseconds.
        max_message_latency_ms: u64,
    },
    /// `farm.group` is not an IPv4 address and port.
    #[error(
        "{at}: farm.group: {value:?} is not an IPv4 address and port (expected e.g. \"239.255.77.1:47000\")"
    )]
    GroupNotIpv4 {
        /// The value.
        at: Location,
        /// The value as written.
        value: String,
    },
    /// `farm.group` is not in 224.0.0.0/4.
    #[error("{at}: farm.group: {group} is not a multicast address (expected 224.0.0.0/4)")]
    GroupNotMulticast {
        /// The value.
        at: Location,
        /// The group as parsed.
        group: SocketAddrV4,
    },
    /// `farm.group` has port 0.
    #[error("{at}: farm.group: {group} has port 0 (expected a non-zero port)")]
    GroupPortZero {
        /// The value.
        at: Location,
        /// The group as parsed.
        group: SocketAddrV4,
    },
    /// An IPv4 address (`farm.interface`) that does not parse.
    #[error("{at}: {key}: {value:?} is not an IPv4 address (expected e.g. \"127.0.0.1\")")]
    NotIpv4 {
        /// The value.
        at: Location,
        /// The key.
        key: String,
        /// The value as written.
        value: String,
    },
    /// An `IP:PORT` that does not parse.
    #[error(
        "{at}: {key}: {value:?} is not an IP address and port \
         (expected e.g. \"127.0.0.1:47101\" or \"[::1]:47101\")"
    )]
    NotSocketAddr {
        /// The value.
        at: Location,
        /// The key.
        key: String,
        /// The value as written.
        value: String,
    },
    /// A `farm.seeds` entry that cannot be a node: port 0, multicast or unspecified address.
    #[error("{at}: {key}: {addr} is not a node's address (expected a unicast IP and a non-zero port)")]
    NotNodeAddr {
        /// The value.
        at: Location,
        /// The key, `farm.seeds[i]`.
        key: String,
        /// The address as parsed.
        addr: SocketAddr,
    },
    /// A `[service]` key that is not usable.
    #[error("{at}: {key}: {message}")]
    BadService {
        /// The value.
        at: Location,
        /// The key.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// `farm.registry` is neither `multicast` nor `etcd`.
    #[error("{at}: farm.registry: {value:?} is not a registry (expected \"multicast\" or \"etcd\")")]
    BadRegistry {
        /// The value.
        at: Location,
        /// The value as written.
        value: String,
    },
    /// `farm.registry = "etcd"` without any `farm.etcd` endpoint.
    #[error(
        "{at}: farm.etcd: the etcd registry needs the cluster's client URLs \
         (expected e.g. etcd = [\"http://10.0.0.5:2379\"])"
    )]
    EtcdEndpointsMissing {
        /// Where `registry` is set.
        at: Location,
    },
    /// A `farm.etcd` entry that is not `http://HOST:PORT`.
    #[error("{at}: farm.etcd[{index}]: {value:?} is not an etcd client URL (expected \"http://HOST:PORT\")")]
    BadEtcdEndpoint {
        /// The value.
        at: Location,
        /// Its index.
        index: usize,
        /// The value as written.
        value: String,
    },
    /// `farm.etcd` is set while the registry is multicast.
    #[error(
        "{at}: farm.etcd: endpoints are set but farm.registry is not \"etcd\" (expected registry = \"etcd\")"
    )]
    EtcdWithoutRegistry {
        /// The first endpoint.
        at: Location,
    },
    /// This build has no etcd client.
    #[error(
        "{at}: farm.registry: this dabs was built without the etcd registry \
         (build it with `cargo build --features etcd`, which needs Debian's protobuf-compiler)"
    )]
    EtcdNotBuilt {
        /// Where `registry` is set.
        at: Location,
    },
    /// A `failover.first` entry that is neither `IP` nor `IP:PORT`.
    #[error(
        "{at}: failover.first[{index}]: {value:?} is not a client address (expected \"IP\" or \"IP:PORT\")"
    )]
    NotClientAddr {
        /// The value.
        at: Location,
        /// Its index in `failover.first`.
        index: usize,
        /// The value as written.
        value: String,
    },
    /// Both `farm.secret` and `farm.secret_file` are set.
    #[error(
        "{at}: farm.secret_file: farm.secret is also set (expected at most one of secret and secret_file)"
    )]
    SecretTwice {
        /// `secret_file`.
        at: Location,
    },
    /// `farm.secret` is not a usable secret.
    #[error("{at}: farm.secret: {source}")]
    BadSecret {
        /// The value.
        at: Location,
        /// What is wrong with it (the secret itself is never shown).
        source: SecretError,
    },
    /// The file named by `farm.secret_file` does not hold a usable secret.
    #[error("{at}: farm.secret_file: {}: {source}", path.display())]
    BadSecretFile {
        /// `secret_file`.
        at: Location,
        /// The secret file, resolved against the configuration file's directory.
        path: PathBuf,
        /// What is wrong with its content (the secret itself is never shown).
        source: SecretError,
    },
    /// The file named by `farm.secret_file` cannot be read.
    #[error("{at}: farm.secret_file: cannot read {}: {source}", path.display())]
    SecretFileUnreadable {
        /// `secret_file`.
        at: Location,
        /// The secret file, resolved against the configuration file's directory.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// No farm secret, and the node is reachable from beyond this host.
    #[error(
        "{at}: farm.secret: a farm without a secret may only run on loopback, but node.bind is \
         {bind} (or farm.interface or a seed is not loopback); set farm.secret or secret_file \
         (32 hex digits or more, the same on every node) or bind 127.0.0.1"
    )]
    SecretRequired {
        /// `node.bind`.
        at: Location,
        /// The bind address.
        bind: SocketAddr,
    },
    /// Both `operator.token` and `operator.token_file` are set.
    #[error(
        "{at}: operator.token_file: operator.token is also set (expected at most one of token and token_file)"
    )]
    TokenTwice {
        /// `token_file`.
        at: Location,
    },
    /// `operator.token` is not a usable token.
    #[error("{at}: operator.token: {source}")]
    BadToken {
        /// The value.
        at: Location,
        /// What is wrong with it (the token itself is never shown).
        source: TokenError,
    },
    /// The file named by `operator.token_file` does not hold a usable token.
    #[error("{at}: operator.token_file: {}: {source}", path.display())]
    BadTokenFile {
        /// `token_file`.
        at: Location,
        /// The token file, resolved against the configuration file's directory.
        path: PathBuf,
        /// What is wrong with its content (the token itself is never shown).
        source: TokenError,
    },
    /// The file named by `operator.token_file` cannot be read.
    #[error("{at}: operator.token_file: cannot read {}: {source}", path.display())]
    TokenFileUnreadable {
        /// `token_file`.
        at: Location,
        /// The token file, resolved against the configuration file's directory.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// `node.operator` is not a loopback address and `[operator]` gives no token: anyone who
    /// can reach it could change the farm's settings and read its traffic.
    #[error(
        "{at}: node.operator: {addr} is not a loopback address and there is no operator token \
         (expected operator.token or operator.token_file, or a loopback address such as 127.0.0.1:{})",
        addr.port()
    )]
    OperatorWithoutToken {
        /// `node.operator`.
        at: Location,
        /// The address as parsed.
        addr: SocketAddr,
    },
    /// `node.data_dir` is the empty string.
    #[error("{at}: node.data_dir: is empty (expected a directory path)")]
    EmptyDataDir {
        /// The value.
        at: Location,
    },
    /// Two `[[app]]` records with the same name.
    #[error(
        "{at}: app[{index}].name: duplicate application name {name:?} (first defined on line \
         {first_line}; expected names unique among [[app]])"
    )]
    DuplicateApp {
        /// The second record's name.
        at: Location,
        /// The second record's index.
        index: usize,
        /// The name.
        name: String,
        /// The line of the first record's name.
        first_line: usize,
    },
    /// A node named twice in one application's sub-group.
    #[error("{at}: {key}: {name:?} is listed twice (expected each node once)")]
    ListedTwice {
        /// The second mention.
        at: Location,
        /// The key, `app[i].subgroup[j]`.
        key: String,
        /// The node's name.
        name: String,
    },
    /// A `[[health.service]]` whose name is taken (built-in `mp` and `database` included).
    #[error(
        "{at}: health.service[{index}].name: {name:?} is already a service \
         (expected unique names; mp and database are built in)"
    )]
    DuplicateService {
        /// The name.
        at: Location,
        /// The service's index among `[[health.service]]`.
        index: usize,
        /// The name.
        name: String,
    },
    /// A `[[health.service]]` with neither or both of `tcp` and `command`.
    #[error(
        "{at}: health.service[{index}]: expected exactly one of tcp = \"IP:PORT\" and \
         command = [\"program\", …]"
    )]
    ServiceCheck {
        /// The service's name.
        at: Location,
        /// The service's index among `[[health.service]]`.
        index: usize,
    },
    /// A `[[health.service]]` whose `command` is `[]`.
    #[error("{at}: health.service[{index}].command: is empty (expected a program and its arguments)")]
    EmptyCommand {
        /// The value.
        at: Location,
        /// The service's index among `[[health.service]]`.
        index: usize,
    },
    /// Two `[[failover.class]]` records with the same name.
    #[error("{at}: failover.class[{index}].name: duplicate class {name:?} (expected unique names)")]
    DuplicateClass {
        /// The second record's name.
        at: Location,
        /// The second record's index.
        index: usize,
        /// The name.
        name: String,
    },
    /// An application that is neither built into the node nor given a `command`.
    #[error(
        "{at}: application {name:?} is not built into this node ({}) and has no `command` to run as its server portion",
        if known.is_empty() { "it has none".to_owned() } else { format!("it has {}", known.join(", ")) }
    )]
    UnknownApplication {
        /// The record's name.
        at: Location,
        /// The name.
        name: String,
        /// The applications built into the node.
        known: Vec<String>,
    },
    /// A policy name, or a DNS zone name, that is not one of those allowed.
    #[error("{at}: {key}: {message}")]
    BadPolicy {
        /// The value.
        at: Location,
        /// The key.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// A `command` without a program.
    #[error("{at}: {key}: name the program to run, e.g. [\"python3\", \"portion.py\"]")]
    EmptyAppCommand {
        /// The value.
        at: Location,
        /// The key.
        key: String,
    },
}

impl ConfigError {
    /// The file and, when there is offending text, its line and column.
    pub fn location(&self) -> &Location {
        use ConfigError::*;
        match self {
            Read { at, .. }
            | Syntax { at, .. }
            | MissingSection { at, .. }
            | MissingKey { at, .. }
            | UnknownKey { at, .. }
            | WrongType { at, .. }
            | Layout { at, .. }
            | InvalidName { at, .. }
            | UnknownApplication { at, .. }
            | EmptyAppCommand { at, .. }
            | BadPolicy { at, .. }
            | OutOfRange { at, .. }
            | MsOutOfRange { at, .. }
            | PercentOutOfRange { at, .. }
            | LeaseOutOfRange { at, .. }
            | LowWaterNotBelowMax { at, .. }
            | GroupNotIpv4 { at, .. }
            | GroupNotMulticast { at, .. }
            | GroupPortZero { at, .. }
            | NotIpv4 { at, .. }
            | NotSocketAddr { at, .. }
            | NotNodeAddr { at, .. }
            | BadRegistry { at, .. }
            | BadService { at, .. }
            | EtcdEndpointsMissing { at, .. }
            | BadEtcdEndpoint { at, .. }
            | EtcdWithoutRegistry { at, .. }
            | EtcdNotBuilt { at, .. }
            | NotClientAddr { at, .. }
            | SecretTwice { at }
            | SecretRequired { at, .. }
            | BadSecret { at, .. }
            | BadSecretFile { at, .. }
            | SecretFileUnreadable { at, .. }
            | TokenTwice { at }
            | BadToken { at, .. }
            | BadTokenFile { at, .. }
            | TokenFileUnreadable { at, .. }
            | OperatorWithoutToken { at, .. }
            | EmptyDataDir { at }
            | DuplicateApp { at, .. }
            | ListedTwice { at, .. }
            | DuplicateService { at, .. }
            | ServiceCheck { at, .. }
            | EmptyCommand { at, .. }
            | DuplicateClass { at, .. } => at,
        }
    }
}

/// What is wrong with a hex farm secret. The messages never echo the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// A character that is not a hex digit.
    #[error("is not hex: character {position} is {found:?} ({})", expected_secret())]
    NotHex {
        /// 1-based position of the character, after surrounding whitespace is trimmed.
        position: usize,
        /// The character.
        found: char,
    },
    /// An odd number of hex digits.
    #[error("has an odd number of hex digits, {digits} ({})", expected_secret())]
    OddLength {
        /// How many digits there are.
        digits: usize,
    },
    /// Fewer than 32 hex digits (16 bytes).
    #[error("is too short: {digits} hex digits ({})", expected_secret())]
    TooShort {
        /// How many digits there are.
        digits: usize,
    },
}

/// What is wrong with an operator token. The messages never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A space, control or non-ASCII character.
    #[error("character {position} is {found:?} (expected visible ASCII characters, no spaces)")]
    BadCharacter {
        /// 1-based position of the character, after surrounding whitespace is trimmed.
        position: usize,
        /// The character. It is not part of a valid token, so showing it leaks nothing usable.
        found: char,
    },
    /// Too short or too long.
    #[error("has {len} characters (expected {min}..={max})", min = super::types::OperatorToken::MIN_LEN, max = super::types::OperatorToken::MAX_LEN)]
    Length {
        /// How many characters there are.
        len: usize,
    },
}

fn expected_secret() -> String {
    format!("expected an even number of hex digits, at least {}", MIN_SECRET_BYTES * 2)
}

fn name_problem(name: &str, bad: Option<char>) -> String {
    match bad {
        Some(c) => format!("{name:?} contains {c:?}"),
        None => "the name is empty".to_string(),
    }
}
