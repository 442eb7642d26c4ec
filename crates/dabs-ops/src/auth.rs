//! Operator credentials: the bearer token that every change, the traffic tap and job
//! submission need, and the read-only views need off loopback.
//!
//! A route opts in with the [`Authorized`] extractor (a handler that takes it runs only for a
//! request carrying the token), or a whole router with [`require_token`] as a layer. Either
//! reads the token from the router's state through `FromRef<S> for Access`.

use crate::api::error;
use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dabs_node::config::{NodeConfig, OperatorToken};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The field every credentials refusal names in its `{"error": {"field", "message"}}` body.
pub const AUTH_FIELD: &str = "authorization";
const REALM: &str = "Bearer realm=\"dabs operator\"";
const REALM_INVALID: &str = "Bearer realm=\"dabs operator\", error=\"invalid_token\"";

/// Who may use an operator interface: the token, if one is configured, and whether the
/// read-only views are open without it.
#[derive(Clone)]
pub struct Access {
    /// SHA-256 of the token: requests are compared digest to digest, in constant time, so
    /// neither the token's content nor its length shows in how long a refusal takes.
    digest: Option<[u8; 32]>,
    open_reads: bool,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &if self.digest.is_some() { "configured" } else { "none" })
            .field("open_reads", &self.open_reads)
            .finish()
    }
}

impl Access {
    /// Guarded by `token` (none: every guarded request is refused with 403); read-only views
    /// open without it when `open_reads`.
    pub fn new(token: Option<&OperatorToken>, open_reads: bool) -> Self {
        Access { digest: token.map(|t| digest(t.expose().as_bytes())), open_reads }
    }

    /// What a node's configuration says: `[operator]` and, for the default of `open_reads`,
    /// whether `node.operator` is a loopback address.
    pub fn from_config(config: &NodeConfig) -> Self {
        Access::new(config.operator.token.as_ref(), config.operator_reads_open())
    }

    /// Whether a token is configured.
    pub fn has_token(&self) -> bool {
        self.digest.is_some()
    }

    /// Whether the read-only views are open without the token.
    pub fn reads_open(&self) -> bool {
        self.open_reads
    }

    /// Lets a request through when its `Authorization: Bearer TOKEN` carries the token;
    /// otherwise says why not ([`Refusal`] is the response to send).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(expected) = &self.digest else { return Err(Refusal::NoTokenHere) };
        let Some(value) = headers.get(header::AUTHORIZATION) else { return Err(Refusal::Missing) };
        let presented = value.as_bytes();
        let (scheme, token) = match presented.iter().position(|&b| b == b' ') {
            Some(i) => (&presented[..i], presented[i + 1..].trim_ascii()),
            None => (presented, &[][..]),
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return Err(Refusal::NotBearer);
        }
        if bool::from(digest(token).ct_eq(expected)) {
            Ok(())
        } else {
            tracing::info!("operator request refused: wrong token");
            Err(Refusal::Wrong)
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Why a guarded request was refused. As a response: 401 with `WWW-Authenticate: Bearer`
/// (`error="invalid_token"` for a wrong token), or 403 when this node has no token at all, so
/// that no token could help; the body is the usual `{"error": {"field", "message"}}` with
/// field [`AUTH_FIELD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header of another scheme than `Bearer`.
    NotBearer,
    /// A bearer token that is not this node's.
    Wrong,
    /// This node has no operator token configured.
    NoTokenHere,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (challenge, message) = match self {
            Refusal::NoTokenHere => {
                return error(
                    StatusCode::FORBIDDEN,
                    AUTH_FIELD,
                    "this node has no operator token, so changes and the traffic tap are refused: \
                     set [operator] token or token_file in its configuration (docs/operator.md)",
                );
            }
            Refusal::Missing => (
                REALM,
                "this needs the operator token: send Authorization: Bearer TOKEN \
                 (dabs farm up prints it as `token …`; see docs/operator.md)",
            ),
            Refusal::NotBearer => (REALM, "expected Authorization: Bearer TOKEN"),
            Refusal::Wrong => (REALM_INVALID, "the operator token is wrong"),
        };
        let mut r = error(StatusCode::UNAUTHORIZED, AUTH_FIELD, message);
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        r
    }
}

/// Proof that a request carries the operator token. A handler that takes an `Authorized`
/// argument runs only for such requests; the others are refused as [`Access::check`] says.
/// Any router whose state gives an [`Access`] (`FromRef`) can use it: a new route that
/// changes something, or submits a job, opts in by taking it.
#[derive(Debug)]
pub struct Authorized(());

impl<S> FromRequestParts<S> for Authorized
where
    Access: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Refusal> {
        Access::from_ref(state).check(&parts.headers).map(|()| Authorized(()))
    }
}

/// The same guard as a layer for a whole router:
/// `router.route_layer(axum::middleware::from_fn_with_state(access, require_token))`.
pub async fn require_token(State(access): State<Access>, request: Request, next: Next) -> Response {
    match access.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// The guard of the read-only views: open when the access says so, else [`require_token`].
pub(crate) async fn guard_reads(State(access): State<Access>, request: Request, next: Next) -> Response {
    if access.open_reads {
        return next.run(request).await;
    }
    require_token(State(access), request, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn only_the_token_passes() {
        let token = OperatorToken::new("0123456789abcdef-token").unwrap();
        let access = Access::new(Some(&token), true);
        assert!(access.check(&headers(Some("Bearer 0123456789abcdef-token"))).is_ok());
        assert!(
            access.check(&headers(Some("bearer  0123456789abcdef-token "))).is_ok(),
            "scheme in any case"
        );
        for (auth, status, challenge) in [
            (None, 401, REALM),
            (Some("Bearer 0123456789abcdef-tokeN"), 401, REALM_INVALID),
            (Some("Bearer 0123456789abcdef-token2"), 401, REALM_INVALID),
            (Some("Bearer "), 401, REALM_INVALID),
            (Some("Bearer"), 401, REALM_INVALID),
            (Some("Basic MDEyMzQ1Njc4OWFiY2RlZi10b2tlbg=="), 401, REALM),
            (Some("0123456789abcdef-token"), 401, REALM),
        ] {
            let r = access.check(&headers(auth)).unwrap_err().into_response();
            assert_eq!(r.status().as_u16(), status, "{auth:?}");
            assert_eq!(r.headers()[header::WWW_AUTHENTICATE], challenge, "{auth:?}");
        }
        let none = Access::new(None, true);
        let r = none.check(&headers(Some("Bearer 0123456789abcdef-token"))).unwrap_err().into_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "no token configured: none can help");
        assert!(!format!("{access:?}").contains("0123456789abcdef"));
    }
}
