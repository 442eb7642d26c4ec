//! The `[operator]` section: the token that guards the operator interface, where it comes
//! from, and the refusal to serve it off loopback without one.

use std::path::Path;

use super::tests::{MINIMAL, parse, refused, with};
use super::{ConfigError as E, NodeConfig, OperatorToken, TokenError};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn operator_at(addr: &str) -> String {
    with("[node]", &format!("operator = \"{addr}\""))
}

#[test]
fn a_token_from_the_file_or_a_token_file() {
    let c = parse(&format!("{}\n[operator]\ntoken = \"{TOKEN}\"\n", operator_at("0.0.0.0:8101"))).unwrap();
    assert_eq!(c.operator.token.as_ref().map(OperatorToken::expose), Some(TOKEN));
    assert!(!c.operator_reads_open(), "reads need the token off loopback by default");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("operator.token"), format!("  {TOKEN}\n")).unwrap();
    let text = format!(
        "{}\n[operator]\ntoken_file = \"operator.token\"\nopen_reads = true\n",
        operator_at("[::]:8101")
    );
    let c = NodeConfig::parse(&text, &dir.path().join("node.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.operator.token.as_ref().map(OperatorToken::expose),
        Some(TOKEN),
        "trimmed, read from the file"
    );
    assert!(c.operator_reads_open(), "open_reads = true opens them anywhere");
}

#[test]
fn loopback_needs_no_token_and_its_reads_are_open() {
    for addr in ["127.0.0.1:8101", "127.3.2.1:0", "[::1]:8101"] {
        let c = parse(&operator_at(addr)).unwrap_or_else(|e| panic!("{addr}: {e}"));
        assert_eq!(c.operator.token, None);
        assert!(c.operator_reads_open(), "{addr}");
    }
    let c = parse(&format!("{}\n[operator]\nopen_reads = false\n", operator_at("127.0.0.1:8101"))).unwrap();
    assert!(!c.operator_reads_open(), "a loopback node may close its reads too");
    assert!(parse(MINIMAL).unwrap().operator_reads_open(), "no interface: nothing to close");
}

/// The attack this guards against: a node whose operator interface anyone on the network can
/// reach, able to change the farm's settings and read its traffic without a credential.
#[test]
fn an_interface_off_loopback_without_a_token_is_refused_at_its_line() {
    for addr in ["0.0.0.0:8101", "10.1.2.3:8101", "[::]:8101", "192.168.0.9:0"] {
        let text = operator_at(addr);
        let e = refused(&text, Some(7), &["node.operator", "not a loopback address", "operator.token"]);
        assert!(matches!(&e, E::OperatorWithoutToken { addr: a, .. } if a.to_string() == addr), "{e:?}");
        // open_reads does not stand in for a token: changes would still be unguarded.
        let text = format!("{text}\n[operator]\nopen_reads = true\n");
        assert!(matches!(parse(&text), Err(E::OperatorWithoutToken { .. })), "{addr}");
    }
}

#[test]
fn bad_tokens_are_refused_without_being_shown() {
    let section = |body: &str| format!("{MINIMAL}\n[operator]\n{body}\n");
    let e =
        refused(&section("token = \"short\""), Some(12), &["operator.token", "has 5 characters", "16..=256"]);
    assert!(matches!(e, E::BadToken { source: TokenError::Length { len: 5 }, .. }));
    let e =
        refused(&section("token = \"0123456789 abcdef0123\""), Some(12), &["operator.token", "character 11"]);
    assert!(!e.to_string().contains("0123456789"), "the token is not echoed: {e}");
    let e =
        refused(&section(&format!("token = \"{TOKEN}\"\ntoken_file = \"t\"")), Some(13), &["at most one"]);
    assert!(matches!(e, E::TokenTwice { .. }));
    let e = refused(&section("token_file = \"/nonexistent/dabs/token\""), Some(12), &["cannot read"]);
    assert!(matches!(e, E::TokenFileUnreadable { .. }));
    let e = refused(&section("colour = 1"), Some(12), &["operator.colour", "unknown key"]);
    assert!(matches!(e, E::UnknownKey { .. }));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t"), "secret but spaced").unwrap();
    std::fs::write(dir.path().join("node.toml"), section("token_file = \"t\"")).unwrap();
    let e = NodeConfig::load(&dir.path().join("node.toml")).unwrap_err();
    assert!(
        matches!(
            e,
            E::BadTokenFile { source: TokenError::BadCharacter { .. } | TokenError::Length { .. }, .. }
        ),
        "{e:?}"
    );
    assert!(!e.to_string().contains("secret-but"), "{e}");
}

#[test]
fn the_token_never_shows_in_debug_output() {
    let c = parse(&format!("{MINIMAL}\n[operator]\ntoken = \"{TOKEN}\"\n")).unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    // Written back, it is there (the node takes it out before storing its configuration).
    assert!(c.to_toml().contains(TOKEN));
    let mut stored = c.clone();
    stored.operator.token = None;
    assert!(!stored.to_toml().contains(TOKEN));
    assert_eq!(NodeConfig::parse(&stored.to_toml(), Path::new("/x/node.toml")).unwrap().operator.token, None);
}
