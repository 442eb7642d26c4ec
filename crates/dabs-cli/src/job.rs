//! `dabs job submit|status|result`: the job-execution service from the command line, over a
//! node's operator interface (interop.md "Jobs").

use base64::Engine;
use serde_json::{Value, json};
use std::process::ExitCode;

/// What `dabs job` does.
#[derive(clap::Subcommand)]
pub enum JobCommand {
    /// Submit MODULE.wasm with one task per INPUT; prints the job's id (and, with --watch,
    /// follows it to the end and prints the results).
    Submit {
        /// The WebAssembly module (the ABI of interop.md: memory, alloc, run; no imports).
        module: std::path::PathBuf,
        /// One task per input: the text as its bytes, or @FILE for a file's bytes.
        #[arg(required = true)]
        inputs: Vec<String>,
        /// Fuel per task (default: the node's [jobs] max_fuel).
        #[arg(long)]
        fuel: Option<u64>,
        /// Where to be told it is done (http://… or mp://HOST:PORT/QUEUE).
        #[arg(long)]
        notify: Option<String>,
        /// Follow the job's events to the end, then print its results.
        #[arg(long)]
        watch: bool,
    },
    /// A job's state.
    Status {
        /// The job's id.
        id: String,
    },
    /// A job's results (each output as text when it is UTF-8, else base64).
    Result {
        /// The job's id.
        id: String,
    },
}

/// Runs a `dabs job` command against the node at `node` (`http://IP:PORT`).
pub fn run(node: &str, token: Option<&str>, json_out: bool, command: JobCommand) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    match rt.block_on(run_async(node, token, json_out, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dabs job: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_async(
    node: &str,
    token: Option<&str>,
    json_out: bool,
    command: JobCommand,
) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    match command {
        JobCommand::Submit { module, inputs, fuel, notify, watch } => {
            let wasm =
                std::fs::read(&module).map_err(|e| format!("cannot read {}: {e}", module.display()))?;
            let mut encoded = Vec::with_capacity(inputs.len());
            for input in &inputs {
                let bytes = match input.strip_prefix('@') {
                    Some(path) => {
                        std::fs::read(path).map_err(|e| format!("cannot read input {path}: {e}"))?
                    }
                    None => input.as_bytes().to_vec(),
                };
                encoded.push(b64.encode(bytes));
            }
            let mut body = json!({ "module": b64.encode(&wasm), "inputs": encoded });
            if let Some(f) = fuel {
                body["fuel"] = f.into();
            }
            if let Some(n) = notify {
                body["notify"] = n.into();
            }
            let accepted = dabs_ops::post_json(node, token, "/api/jobs", &body).await?;
            let id = accepted["id"].as_str().ok_or("the node's answer has no id")?.to_owned();
            if !watch {
                if json_out {
                    println!("{accepted}");
                } else {
                    println!("job {id} accepted ({} tasks)", inputs.len());
                    println!("  status  {node}/api/jobs/{id}");
                    println!("  result  {node}/api/jobs/{id}/result");
                    println!("  address {}", accepted["address"].as_str().unwrap_or_default());
                }
                return Ok(());
            }
            if !json_out {
                eprintln!("job {id} accepted ({} tasks); following it", inputs.len());
            }
            let total = inputs.len();
            let mut done = 0usize;
            let events = format!("/api/jobs/{id}/events");
            dabs_ops::follow_events(node, token, &events, |event, _| match event {
                "task" => {
                    done += 1;
                    if !json_out {
                        eprint!("\r  {done}/{total} tasks done");
                    }
                    true
                }
                "done" => false,
                _ => true,
            })
            .await?;
            if !json_out {
                eprintln!();
            }
            print_results(node, token, &id, json_out).await
        }
        JobCommand::Status { id } => {
            let v = dabs_ops::get_json_with(node, token, &format!("/api/jobs/{id}")).await?;
            if json_out {
                println!("{v}");
            } else {
                println!(
                    "job {id}: {} — {} of {} tasks done, {} failed (owner {}, replica {})",
                    v["state"].as_str().unwrap_or("?"),
                    v["done"],
                    v["tasks"],
                    v["failed"],
                    v["owner"].as_str().unwrap_or("?"),
                    v["replica"].as_str().unwrap_or("none"),
                );
            }
            Ok(())
        }
        JobCommand::Result { id } => print_results(node, token, &id, json_out).await,
    }
}

async fn print_results(node: &str, token: Option<&str>, id: &str, json_out: bool) -> Result<(), String> {
    let v = dabs_ops::get_json_with(node, token, &format!("/api/jobs/{id}/result")).await?;
    if json_out {
        println!("{v}");
        return Ok(());
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    for r in v["results"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let task = &r["task"];
        match (r["ok"].as_str(), r["err"].as_str()) {
            (Some(ok), _) => {
                let bytes = b64.decode(ok).unwrap_or_default();
                match std::str::from_utf8(&bytes) {
                    Ok(text) if !text.chars().any(char::is_control) => println!("{task}\tok\t{text}"),
                    _ => println!("{task}\tok\tbase64:{ok}"),
                }
            }
            (None, Some(err)) => println!("{task}\terr\t{err}"),
            _ => println!("{task}\t?\t{}", Value::clone(r)),
        }
    }
    Ok(())
}
