//! R-SEC-4 end to end: `dabs farm up` prints the farm's public key, and a client that pins it
//! (`dabs calc --farm-key`) calculates over a session keyed with Noise NK; a client pinning any
//! other key gets no answer from the farm and nothing in clear.

use dabs_testkit::Farm;
use std::process::Command;

const DABS: &str = env!("CARGO_BIN_EXE_dabs");

#[test]
fn a_client_pinning_the_printed_farm_key_calculates_and_one_pinning_another_key_is_refused() {
    let farm = Farm::up(DABS, 2, "farm-key");
    farm.wait_for_decider();
    let manifest = farm.manifest();
    let key = manifest["farm_key"].as_str().expect("farm_key in farm.json").to_owned();
    assert_eq!(key.len(), 64, "32 bytes as hex: {key}");
    let group = farm.group().to_string();
    let calc = |key: &str| {
        Command::new(DABS)
            .args(["calc", "--farm", &group, "--farm-key", key, "6", "x", "7"])
            .output()
            .unwrap()
    };

    let pinned = calc(&key);
    assert!(pinned.status.success(), "pinned client failed: {}", String::from_utf8_lossy(&pinned.stderr));
    assert_eq!(String::from_utf8_lossy(&pinned.stdout).trim(), "42");

    // Another farm's key (one bit off): no server here can prove it, so no answer at all.
    let mut other = hex::decode(&key).unwrap();
    other[0] ^= 1;
    let refused = calc(&hex::encode(other));
    assert!(!refused.status.success(), "a client pinning another key was served");
    assert!(refused.stdout.is_empty(), "nothing calculated: {:?}", String::from_utf8_lossy(&refused.stdout));

    let malformed = calc("abc");
    assert_eq!(malformed.status.code(), Some(2), "a malformed key is a usage error");
}
