//! The key-value store's client: `kv --farm 239.255.77.1:7700 put colour blue`.

use clap::{Parser, Subcommand};
use dabs_net::DriverOptions;
use dabs_sdk::{FarmClient, FarmClientOptions};
use kv::{KvClientPart, KvOps};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(about = "Client of the example key-value store on a dabs farm")]
struct Args {
    /// The farm's group address, or one node's MP address.
    #[arg(long)]
    farm: SocketAddr,
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand)]
enum Op {
    /// Prints the value under KEY (exit 1 when there is none).
    Get { key: String },
    /// Sets KEY to VALUE.
    Put { key: String, value: String },
    /// Removes KEY.
    Del { key: String },
    /// Lists the keys.
    Keys,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kv: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, String> {
    let endpoint = dabs_net::spawn((std::net::Ipv4Addr::LOCALHOST, 0).into(), DriverOptions::default())
        .await
        .map_err(|e| format!("cannot open a local endpoint: {e}"))?;
    let options = FarmClientOptions::new(args.farm, kv::APP);
    let client = Arc::new(
        FarmClient::start(endpoint, options)
            .await
            .map_err(|e| format!("cannot reach the farm at {}: {e}", args.farm))?,
    );
    let store = KvClientPart::new(client.clone());
    let outcome = match args.op {
        Op::Get { key } => store.get(key).await.map(|v| match v {
            Some(v) => {
                println!("{v}");
                ExitCode::SUCCESS
            }
            None => ExitCode::FAILURE,
        }),
        Op::Put { key, value } => store.put(key, value).await.map(|_| ExitCode::SUCCESS),
        Op::Del { key } => store.del(key).await.map(|_| ExitCode::SUCCESS),
        Op::Keys => store.keys().await.map(|keys| {
            keys.iter().for_each(|k| println!("{k}"));
            ExitCode::SUCCESS
        }),
    };
    // The close goes out before the program ends, so the farm keeps no session for it.
    client.stop().await;
    outcome.map_err(|e| e.to_string())
}
