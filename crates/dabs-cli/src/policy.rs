//! `dabs policy --node URL [APP [NAME]]`: each application's policy, its preferred server and
//! why; with NAME, swaps APP's policy live (the change spreads to every node).

use serde_json::{Value, json};
use std::process::ExitCode;

/// Lists the policies, shows one, or sets one.
pub fn run(
    node: &str,
    app: Option<&str>,
    policy: Option<&str>,
    json_out: bool,
    token: Option<&str>,
) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result = rt.block_on(async {
        match (app, policy) {
            (Some(app), Some(name)) => {
                let path = format!("/api/applications/{app}/policy");
                dabs_ops::put_json(node, token, &path, &json!({ "policy": name })).await.map(|v| vec![v])
            }
            (Some(app), None) => {
                dabs_ops::get_json(node, &format!("/api/applications/{app}/policy")).await.map(|v| vec![v])
            }
            (None, _) => dabs_ops::get_json(node, "/api/applications")
                .await
                .map(|v| v.as_array().cloned().unwrap_or_default()),
        }
    });
    match result {
        Ok(views) if json_out => {
            println!("{}", Value::Array(views));
            ExitCode::SUCCESS
        }
        Ok(views) => {
            for v in &views {
                print_view(v);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dabs policy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_view(v: &Value) {
    let text = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    println!("{}: policy {}, preferred {}", text("app"), text("policy"), text("preferred"));
    for r in v["ranked"].as_array().into_iter().flatten() {
        println!("  {:<12} {}", r["node"].as_str().unwrap_or("?"), r["why"].as_str().unwrap_or(""));
    }
    for x in v["excluded"].as_array().into_iter().flatten() {
        println!("  {:<12} out: {}", x["node"].as_str().unwrap_or("?"), x["why"].as_str().unwrap_or(""));
    }
}
