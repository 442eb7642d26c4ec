//! `dabs calc --farm GROUP:PORT 7 / 2`: the calculator client from the command line.

use dabs_calc::{CalcClient, Operands, Profile};
use dabs_net::{Config, DriverOptions};
use dabs_sdk::{FarmClient, FarmClientOptions};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Client endpoint settings that notice a dead server within about a second.
pub fn client_config() -> Config {
    Config {
        ack_timeout: Duration::from_millis(60),
        ack_timeout_max: Duration::from_millis(400),
        max_retries: 5,
        reply_timeout: Duration::from_secs(10),
        ..Config::default()
    }
}

/// A client endpoint for a farm at `farm` with [`client_config`]: on loopback for a farm on
/// loopback (or its group, joined on loopback), else on the interface that routes to it.
pub async fn client_endpoint(farm: SocketAddr) -> Result<dabs_net::EndpointHandle, String> {
    let ip = farm.ip();
    let bind = if ip.is_loopback() || ip.is_multicast() { "127.0.0.1:0" } else { "0.0.0.0:0" };
    dabs_net::spawn(
        bind.parse().expect("literal"),
        DriverOptions { config: client_config(), ..Default::default() },
    )
    .await
    .map_err(|e| format!("cannot open a local endpoint: {e}"))
}

/// Starts a calculator client whose device is `device`: the farm places its integer
/// operations (R-CL-2), in the sandbox from `module` (the farm's verified `integer-ops`) when
/// placed here, over the network otherwise. Also says whether they were placed here.
pub async fn connect_device(
    farm: SocketAddr,
    device: dabs_farm_proto::modules::Device,
    module: &dabs_calc::modules::WasmIntegerOps,
) -> Result<(CalcClient, Arc<FarmClient>, bool), String> {
    let endpoint = client_endpoint(farm).await?;
    let options = FarmClientOptions {
        idempotent: true,
        device: Some(device),
        ..FarmClientOptions::new(farm, dabs_calc::APP)
    };
    let client = Arc::new(
        FarmClient::start(endpoint, options)
            .await
            .map_err(|e| format!("cannot reach the farm at {farm}: {e}"))?,
    );
    let here = client.placement().await.iter().any(|(name, place)| {
        name == dabs_calc::modules::INTEGER_OPS && *place == dabs_farm_proto::modules::Placement::Client
    });
    let calc = CalcClient::placed(client.clone(), here.then(|| module.clone()));
    Ok((calc, client, here))
}

/// Starts a calculator client on a fresh endpoint.
pub async fn connect(farm: SocketAddr, profile: Profile) -> Result<(CalcClient, Arc<FarmClient>), String> {
    connect_app(farm, profile, dabs_calc::APP).await
}

/// Starts a client of calculator application `app` (the calculator or its slow variant).
pub async fn connect_app(
    farm: SocketAddr,
    profile: Profile,
    app: &str,
) -> Result<(CalcClient, Arc<FarmClient>), String> {
    connect_with(farm, profile, app, Security::default()).await
}

/// How a calculator client reaches the farm and protects its session.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// Reach the farm by MP over TCP (`farm` is then a node's MP address), for networks that
    /// block UDP.
    pub tcp: bool,
    /// Encrypt the session (Noise NN unless `farm_key` pins the farm).
    pub encrypt: bool,
    /// The farm secret, to verify `FAILOVER` notices.
    pub secret: Option<Vec<u8>>,
    /// The farm's public key: encrypt with Noise NK against it and accept no other server.
    pub farm_key: Option<[u8; 32]>,
}

/// Like [`connect_app`], with the session protected as `security` says.
pub async fn connect_with(
    farm: SocketAddr,
    profile: Profile,
    app: &str,
    security: Security,
) -> Result<(CalcClient, Arc<FarmClient>), String> {
    let Security { tcp, encrypt, secret, farm_key } = security;
    let endpoint = client_endpoint(farm).await?;
    let options = FarmClientOptions {
        idempotent: true,
        encrypt,
        secret,
        farm_key,
        transport: if tcp { dabs_sdk::Transport::Tcp } else { dabs_sdk::Transport::Udp },
        ..FarmClientOptions::new(farm, app)
    };
    let client = Arc::new(
        FarmClient::start(endpoint, options)
            .await
            .map_err(|e| format!("cannot reach the farm at {farm}: {e}"))?,
    );
    Ok((CalcClient::new(client.clone(), profile), client))
}

/// Runs one calculation and prints its result; over an encrypted session with `encrypt`, and
/// one that authenticates the farm with `farm_key`.
pub fn run(farm: SocketAddr, a: &str, op: &str, b: &str, fat: bool, security: Security) -> ExitCode {
    let operands = match Operands::parse(a, b) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("dabs calc: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dabs calc: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let profile = if fat { Profile::Fat } else { Profile::Thin };
        let (calc, client) = match connect_with(farm, profile, dabs_calc::APP, security).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("dabs calc: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = calc.compute(op, operands).await;
        client.stop().await;
        match result {
            Ok(v) => {
                println!("{v}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dabs calc: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
