//! `dabs client calc --farm ADDR:PORT [--ops http://IP:PORT] [6 x 7]`: a client portion delivered
//! in parts (R-CL-1…3, R-MP-7): its modules fetched and verified, its channel found by falling
//! back through UDP, TCP and the WebSocket, its integer operations placed by the farm from the
//! device it reports. Prints what it fetched, dropped and settled on, then calculates.

use crate::calc::client_endpoint;
use dabs_calc::modules::{INTEGER_OPS, WasmIntegerOps};
use dabs_calc::{CalcClient, Operands};
use dabs_farm_proto::modules::Placement;
use dabs_sdk::Transport;
use dabs_sdk::delivery::{Bootstrap, Delivered, DeviceProfile, deliver};
use std::net::SocketAddr;
use std::process::ExitCode;

/// A client portion delivered in parts (R-CL): fetch and verify its modules, fall back
/// through UDP, TCP and the WebSocket until a channel works, run `IntegerOps` where the farm
/// places it for this device: `dabs client calc --farm IP:PORT --ops http://IP:PORT 6 x 7`.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// The application (the calculator, `calc`).
    pub app: String,
    /// The farm's MP address: its group, or one node's (over TCP it must be a node's).
    #[arg(long, value_parser = crate::addr::parse_socket_addr)]
    pub farm: SocketAddr,
    /// A node's operator interface, http://IP:PORT: modules come from here, and the
    /// WebSocket channel is here. Default: the one the farm names when asked over UDP (where
    /// UDP to the farm is blocked, this must be given).
    #[arg(long)]
    pub ops: Option<String>,
    /// The client class: which modules it is entitled to (native, embedded).
    #[arg(long, default_value = "native")]
    pub class: String,
    /// The device: `host` (measured here) or `constrained` (1 CPU, 16 MiB, no WebAssembly).
    #[arg(long, default_value = "host")]
    pub profile: String,
    /// Offer the farm at most this many CPUs.
    #[arg(long)]
    pub max_cpus: Option<u32>,
    /// Offer the farm at most this much memory, MiB.
    #[arg(long)]
    pub max_memory_mb: Option<u64>,
    /// The channels this device can use, comma-separated (udp,tcp,ws); add-ons for the
    /// others are dropped.
    #[arg(long, value_delimiter = ',')]
    pub channels: Vec<String>,
    /// The farm's publishing key (base64), pinned: modules signed by any other are refused.
    #[arg(long, value_parser = parse_publishing_key)]
    pub publishing_key: Option<[u8; 32]>,
    /// Feature add-ons to fetch and use (the calculator's: `grouping`, results with their
    /// digits grouped in threes).
    #[arg(long = "feature")]
    pub features: Vec<String>,
    /// Then make this many calls with known answers, and say how many were answered.
    #[arg(long, default_value_t = 0)]
    pub calls: u32,
    /// A OP B to compute (for example 6 x 7).
    #[arg(allow_hyphen_values = true, num_args = 0..=3)]
    pub expr: Vec<String>,
}

/// Runs the command.
pub fn run(args: ClientArgs) -> ExitCode {
    if args.app != dabs_calc::APP {
        eprintln!(
            "dabs client: this command runs the calculator's client portion only (app \"calc\"), not {:?}",
            args.app
        );
        return ExitCode::from(2);
    }
    if !args.expr.is_empty() && args.expr.len() != 3 {
        eprintln!("dabs client: an expression is three words, A OP B (for example 6 x 7)");
        return ExitCode::from(2);
    }
    let Some(mut device) = DeviceProfile::named(&args.profile) else {
        eprintln!("dabs client: unknown device profile {:?}: host or constrained", args.profile);
        return ExitCode::from(2);
    };
    if !args.channels.is_empty() {
        let mut usable = Vec::new();
        for name in &args.channels {
            match Transport::from_name(name) {
                Some(t) => usable.push(t),
                None => {
                    eprintln!("dabs client: unknown channel {name:?}: udp, tcp or ws");
                    return ExitCode::from(2);
                }
            }
        }
        device.channels = usable;
    }
    let device = device.capped(args.max_cpus, args.max_memory_mb);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dabs client: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let endpoint = match client_endpoint(args.farm).await {
            Ok(e) => e,
            Err(e) => {
                eprintln!("dabs client: {e}");
                return ExitCode::FAILURE;
            }
        };
        let ops = match &args.ops {
            Some(ops) => ops.clone(),
            None => match discover_ops(&endpoint, &args).await {
                Ok(ops) => {
                    println!("modules from {ops} (the operator interface the farm named)");
                    ops
                }
                Err(e) => {
                    eprintln!("dabs client: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let boot = Bootstrap {
            ops,
            farm: args.farm,
            app: args.app.clone(),
            class: args.class.clone(),
            device,
            publishing_key: args.publishing_key,
            options: None,
            features: args.features.clone(),
        };
        let delivered = match deliver(endpoint, boot).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("dabs client: {e}");
                return ExitCode::FAILURE;
            }
        };
        report(&delivered);
        let module = match delivered.mutable.get(INTEGER_OPS) {
            Some(v) => match WasmIntegerOps::new(&v.bytes) {
                Ok(m) => Some(m),
                Err(e) => {
                    eprintln!("dabs client: {INTEGER_OPS} does not run: {e}");
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        let calc = CalcClient::placed(delivered.client.clone(), module);
        let grouping = delivered.features.get(dabs_calc::modules::GROUPING).map(|v| v.module.clone());
        let status = calculate(&calc, &args, grouping.as_ref()).await;
        delivered.client.stop().await;
        status
    })
}

/// The operator interface of the node that answers an `OPEN_SESSION` for the application at
/// `--farm` over UDP: the REPLY's WebSocket channel (`ws://IP:PORT/mp`) is on it. The session
/// is closed at once; the delivered client opens its own.
async fn discover_ops(endpoint: &dabs_net::EndpointHandle, args: &ClientArgs) -> Result<String, String> {
    let ask = dabs_farm_proto::shapes::OpenAsk { app: Some(args.app.clone()), ..Default::default() };
    let wait = std::time::Duration::from_secs(3);
    let open = endpoint.open(dabs_net::Addr::Udp(args.farm), 1, ask.to_cbor());
    let session = match tokio::time::timeout(wait, open).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(format!(
                "cannot ask the farm at {} where its modules are: {e}; give --ops",
                args.farm
            ));
        }
        Err(_) => {
            return Err(format!(
                "the farm at {} did not answer over UDP within {wait:?}; give --ops http://IP:PORT",
                args.farm
            ));
        }
    };
    let channels = dabs_farm_proto::shapes::parse_open_channels(&session.reply).unwrap_or_default();
    session.close_confirmed(dabs_sdk::client::CLOSE_WAIT).await;
    channels
        .iter()
        .find(|(name, _)| name == "ws")
        .and_then(|(_, url)| url.strip_prefix("ws://")?.strip_suffix(dabs_net::WEBSOCKET_PATH))
        .map(|at| format!("http://{at}"))
        .ok_or_else(|| format!("the farm at {} names no operator interface; give --ops", args.farm))
}

fn report(d: &Delivered) {
    if d.key_from_node {
        println!("publishing key taken from the node (pin it with --publishing-key)");
    }
    for (name, kind, len) in &d.fetched {
        println!("fetched {name} ({kind:?}, {len} bytes): hash and signature verified");
    }
    for name in &d.dropped {
        println!("dropped {name}: this device cannot use its channel");
    }
    for a in &d.attempts {
        match &a.outcome {
            Ok(()) => println!("channel {}: established in {:?}", a.transport.name(), a.took),
            Err(why) => {
                println!("channel {}: not established after {:?} ({why})", a.transport.name(), a.took)
            }
        }
    }
    for (name, place) in &d.placement {
        let at = if *place == Placement::Client { "this client's sandbox" } else { "the server" };
        println!("{name} runs in {at}");
    }
    println!(
        "settled on {} (first set in {:?}, delivered in {:?})",
        d.transport.name(),
        d.first_set,
        d.total
    );
}

async fn calculate(
    calc: &CalcClient,
    args: &ClientArgs,
    grouping: Option<&dabs_sandbox::Module>,
) -> ExitCode {
    if let [a, op, b] = args.expr.as_slice() {
        let operands = match Operands::parse(a, b) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("dabs client: {e}");
                return ExitCode::from(2);
            }
        };
        match calc.compute(op, operands).await {
            Ok(dabs_calc::Value::Int(n)) if grouping.is_some() => {
                match dabs_calc::modules::group_digits(grouping.expect("checked"), n) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("dabs client: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            Ok(v) => println!("{v}"),
            Err(e) => {
                eprintln!("dabs client: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if args.calls > 0 {
        let (answered, wrong) = known_answers(calc, args.calls).await;
        println!("{answered} of {} calls answered correctly, {wrong} wrong or failed", args.calls);
        if wrong > 0 {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `n` calls alternating integer and float operations whose answers are known here.
async fn known_answers(calc: &CalcClient, n: u32) -> (u32, u32) {
    let (mut answered, mut wrong) = (0, 0);
    for i in 0..n {
        let a = i64::from(i);
        let ok = if i % 2 == 0 {
            calc.compute("x", Operands::Int(a, 3)).await.is_ok_and(|v| v == dabs_calc::Value::Int(a * 3))
        } else {
            let x = f64::from(i) + 0.5;
            calc.compute("+", Operands::Float(x, 0.25))
                .await
                .is_ok_and(|v| v == dabs_calc::Value::Float(x + 0.25))
        };
        if ok { answered += 1 } else { wrong += 1 }
    }
    (answered, wrong)
}

/// The publishing key from base64 (as `GET /api/farm/publishing-key` gives it).
pub fn parse_publishing_key(s: &str) -> Result<[u8; 32], String> {
    dabs_farm_proto::modules::base64_decode(s)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| "the publishing key is 32 bytes in base64 (GET /api/farm/publishing-key)".into())
}
