//! Partitions: one definition, two sides.
//!
//! A partition's operations are declared once with [`partition!`](crate::partition!). The macro
//! produces the trait, a network partition implementing it by MP calls (arguments as a CBOR
//! array, the answer as `{"ok": value}` or `{"err": {"code", "message"}}`), and a server
//! dispatcher that decodes a request and runs any implementation of the trait. A mutable
//! module is simply a local implementation of the same trait; [`Placed`] holds either.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;

/// Why a partition operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    /// The operation ran and could not be done (an answer, not a transport failure).
    #[error("{code}: {message}")]
    Op {
        /// Machine-readable code, e.g. `division_by_zero`.
        code: String,
        /// For people.
        message: String,
    },
    /// The request or its answer could not be carried.
    #[error("transport: {0}")]
    Transport(String),
}

impl PartitionError {
    /// An operation error.
    pub fn op(code: &str, message: impl Into<String>) -> Self {
        PartitionError::Op { code: code.into(), message: message.into() }
    }
}

/// A boxed future, for the dyn-compatible [`Caller`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Carries a request to wherever the partition's server side is.
pub trait Caller: Send + Sync {
    /// Sends `payload` as `command` and returns the reply.
    fn call(&self, command: u16, payload: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, PartitionError>>;
}

/// Encodes an argument tuple as a CBOR array.
pub fn encode_args<T: Serialize>(args: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(args, &mut out).expect("CBOR into a Vec cannot fail");
    out
}

/// Decodes an argument tuple of `arity` elements; anything else (another length, another
/// type, not an array) is the `bad_operands` error.
pub fn decode_args<T: DeserializeOwned>(payload: &[u8], arity: usize) -> Result<T, PartitionError> {
    let bad = |why: String| PartitionError::op("bad_operands", why);
    let value: ciborium::Value =
        ciborium::from_reader(payload).map_err(|e| bad(format!("operands are not CBOR: {e}")))?;
    match &value {
        ciborium::Value::Array(items) if items.len() == arity => {}
        // No operands: the empty tuple encodes as null.
        ciborium::Value::Null if arity == 0 => {}
        ciborium::Value::Array(items) => {
            return Err(bad(format!("expected {arity} operands, got {}", items.len())));
        }
        _ => return Err(bad(format!("expected an array of {arity} operands"))),
    }
    value.deserialized().map_err(|e| bad(format!("operands do not fit the operation: {e}")))
}

/// `{"ok": value}`.
pub fn encode_ok<T: Serialize>(value: &T) -> Vec<u8> {
    encode_args(&std::collections::BTreeMap::from([("ok", value)]))
}

/// `{"err": {"code": C, "message": M}}`.
pub fn encode_err(code: &str, message: &str) -> Vec<u8> {
    let inner = std::collections::BTreeMap::from([("code", code), ("message", message)]);
    encode_args(&std::collections::BTreeMap::from([("err", inner)]))
}

/// Reads `{"ok": value}` or `{"err": …}`. The key decides, not the value: `{"ok": null}` is
/// an operation that returned nothing (`None`), not a malformed reply.
pub fn decode_reply<T: DeserializeOwned>(reply: &[u8]) -> Result<T, PartitionError> {
    #[derive(serde::Deserialize)]
    struct Err {
        code: String,
        message: String,
    }
    let malformed = |why: String| PartitionError::Transport(format!("malformed reply: {why}"));
    let value: ciborium::Value = ciborium::from_reader(reply).map_err(|e| malformed(e.to_string()))?;
    let map = value.as_map().ok_or_else(|| malformed("not a map".into()))?;
    let field = |k: &str| map.iter().find(|(key, _)| key.as_text() == Some(k)).map(|(_, v)| v);
    match (field("ok"), field("err")) {
        (Some(v), None) => v.deserialized().map_err(|e| malformed(format!("\"ok\" does not fit: {e}"))),
        (None, Some(e)) => {
            let e: Err =
                e.deserialized().map_err(|e| malformed(format!("\"err\" is not {{code, message}}: {e}")))?;
            Err(PartitionError::Op { code: e.code, message: e.message })
        }
        _ => Err(PartitionError::Transport("reply has neither \"ok\" nor \"err\"".into())),
    }
}

/// Either a local implementation (a mutable module running in the caller) or the network
/// partition that replaces it. The partition's trait is implemented for it by
/// [`partition!`](crate::partition!), so callers use it without knowing which it holds.
pub enum Placed<L, N> {
    /// Runs here, in the caller's task.
    Local(L),
    /// Runs on the server.
    Network(N),
}

impl<L, N> Placed<L, N> {
    /// True when the operations run locally.
    pub fn is_local(&self) -> bool {
        matches!(self, Placed::Local(_))
    }
}

/// Declares a partition: its trait, its network side and its server dispatcher.
///
/// ```ignore
/// dabs_sdk::partition! {
///     /// Integer operations.
///     pub trait IntegerOps via IntClientPart, serve serve_integer_ops {
///         fn add(a: i64, b: i64) -> i64 = 256;
///     }
/// }
/// ```
#[macro_export]
macro_rules! partition {
    (
        $(#[$meta:meta])*
        $vis:vis trait $name:ident via $net:ident, serve $serve:ident {
            $( $(#[$mmeta:meta])* fn $method:ident ( $($arg:ident : $ty:ty),* $(,)? ) -> $ret:ty = $cmd:expr ; )*
        }
    ) => {
        $(#[$meta])*
        $vis trait $name: Send + Sync {
            $(
                $(#[$mmeta])*
                fn $method(&self, $($arg: $ty),*)
                    -> impl ::std::future::Future<Output = ::std::result::Result<$ret, $crate::PartitionError>> + Send;
            )*
        }

        #[doc = concat!("The network partition of [`", stringify!($name), "`]: each operation is an MP call.")]
        $vis struct $net {
            caller: ::std::sync::Arc<dyn $crate::Caller>,
        }

        impl $net {
            /// A network partition calling through `caller`.
            $vis fn new(caller: ::std::sync::Arc<dyn $crate::Caller>) -> Self {
                Self { caller }
            }
        }

        impl $name for $net {
            $(
                fn $method(&self, $($arg: $ty),*)
                    -> impl ::std::future::Future<Output = ::std::result::Result<$ret, $crate::PartitionError>> + Send {
                    let payload = $crate::encode_args(&($($arg,)*));
                    let caller = self.caller.clone();
                    async move {
                        let reply = caller.call($cmd, payload).await?;
                        $crate::decode_reply::<$ret>(&reply)
                    }
                }
            )*
        }

        impl<L: $name, N: $name> $name for $crate::Placed<L, N> {
            $(
                fn $method(&self, $($arg: $ty),*)
                    -> impl ::std::future::Future<Output = ::std::result::Result<$ret, $crate::PartitionError>> + Send {
                    async move {
                        match self {
                            $crate::Placed::Local(l) => l.$method($($arg),*).await,
                            $crate::Placed::Network(n) => n.$method($($arg),*).await,
                        }
                    }
                }
            )*
        }

        #[doc = concat!("Runs a request for [`", stringify!($name), "`] on `imp`; `None` if the command is not one of its operations.")]
        $vis async fn $serve<T: $name>(imp: &T, command: u16, payload: &[u8]) -> ::std::option::Option<::std::vec::Vec<u8>> {
            $(
                if command == $cmd {
                    let names: &[&str] = &[$(stringify!($arg)),*];
                    let arity = names.len();
                    let args: ::std::result::Result<($($ty,)*), _> = $crate::decode_args(payload, arity);
                    let result = match args {
                        Ok(($($arg,)*)) => imp.$method($($arg),*).await,
                        Err(e) => Err(e),
                    };
                    return Some(match result {
                        Ok(v) => $crate::encode_ok(&v),
                        Err($crate::PartitionError::Op { code, message }) => $crate::encode_err(&code, &message),
                        Err($crate::PartitionError::Transport(m)) => $crate::encode_err("unavailable", &m),
                    });
                }
            )*
            None
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    crate::partition! {
        /// A counter with an operation of no operands.
        pub(crate) trait Counter via CounterNet, serve serve_counter {
            /// The count.
            fn count() -> u64 = 300;
            /// The count plus n.
            fn plus(n: u64) -> u64 = 301;
        }
    }

    struct Seven;

    impl Counter for Seven {
        async fn count(&self) -> Result<u64, PartitionError> {
            Ok(7)
        }
        async fn plus(&self, n: u64) -> Result<u64, PartitionError> {
            Ok(7 + n)
        }
    }

    /// Answers calls by serving them on [`Seven`], as a server portion would.
    struct Loopback;

    impl Caller for Loopback {
        fn call(&self, command: u16, payload: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, PartitionError>> {
            Box::pin(
                async move { Ok(serve_counter(&Seven, command, &payload).await.expect("a counter command")) },
            )
        }
    }

    #[tokio::test]
    async fn operations_without_operands_work_locally_and_over_the_network() {
        let both: [Placed<Seven, CounterNet>; 2] =
            [Placed::Local(Seven), Placed::Network(CounterNet::new(Arc::new(Loopback)))];
        for p in &both {
            assert_eq!(p.count().await.unwrap(), 7);
            assert_eq!(p.plus(3).await.unwrap(), 10);
        }
        // One operand where none is expected is refused, not ignored.
        let reply = serve_counter(&Seven, 300, &encode_args(&(1u64,))).await.unwrap();
        assert!(decode_reply::<u64>(&reply).is_err());
    }

    #[test]
    fn an_operation_returning_nothing_is_not_a_malformed_reply() {
        let none: Option<String> = None;
        assert_eq!(decode_reply::<Option<String>>(&encode_ok(&none)).unwrap(), None);
        assert_eq!(decode_reply::<Option<String>>(&encode_ok(&Some("x"))).unwrap(), Some("x".into()));
        assert!(matches!(decode_reply::<i64>(&encode_err("c", "m")), Err(PartitionError::Op { .. })));
        assert!(matches!(decode_reply::<i64>(b"\xa0"), Err(PartitionError::Transport(_))));
        assert!(matches!(decode_reply::<i64>(b"\x01"), Err(PartitionError::Transport(_))));
    }
}
