//! `gateway`: the example API gateway.
//!
//! ```text
//! gateway [--listen ADDR] [--config FILE] [--order-url URL --payment-url URL --inventory-url URL]
//!         [--bench-routes]
//! gateway order|payment|inventory --listen ADDR
//! ```
//!
//! Without downstream URLs it runs everything embedded: the three services on loopback ports
//! with fault controls, and the gateway on 127.0.0.1:8080. Environment: `GATEWAY_LISTEN`,
//! `GATEWAY_CONFIG`, `ORDER_URL`, `PAYMENT_URL`, `INVENTORY_URL`.

use std::net::SocketAddr;
use std::process::ExitCode;

use gateway::{downstreams, start_embedded, start_gateway, GatewayConfig, Options};

const USAGE: &str = "usage:
  gateway [--listen ADDR] [--config FILE] [--order-url URL --payment-url URL --inventory-url URL]
          [--bench-routes]
  gateway order|payment|inventory --listen ADDR

Without downstream URLs, everything runs embedded (with fault controls under /admin/faults).
Environment: GATEWAY_LISTEN, GATEWAY_CONFIG, ORDER_URL, PAYMENT_URL, INVENTORY_URL.";

#[derive(Debug, Default)]
struct Args {
    service: Option<String>,
    listen: Option<String>,
    config: Option<String>,
    order: Option<String>,
    payment: Option<String>,
    inventory: Option<String>,
    bench_routes: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        config: std::env::var("GATEWAY_CONFIG").ok(),
        order: std::env::var("ORDER_URL").ok(),
        payment: std::env::var("PAYMENT_URL").ok(),
        inventory: std::env::var("INVENTORY_URL").ok(),
        ..Args::default()
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("`{name}` needs a value"));
        match arg.as_str() {
            "--listen" => parsed.listen = Some(value("--listen")?),
            "--config" => parsed.config = Some(value("--config")?),
            "--order-url" => parsed.order = Some(value("--order-url")?),
            "--payment-url" => parsed.payment = Some(value("--payment-url")?),
            "--inventory-url" => parsed.inventory = Some(value("--inventory-url")?),
            "--bench-routes" => parsed.bench_routes = true,
            "order" | "payment" | "inventory" if parsed.service.is_none() => {
                parsed.service = Some(arg)
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("error: {problem}\n");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listen = |default: &str| -> Result<SocketAddr, String> {
        let text = args.listen.as_deref().unwrap_or(default);
        text.parse()
            .map_err(|_| format!("`{text}` is not an address like 127.0.0.1:8080"))
    };

    // One downstream alone (GATEWAY_LISTEN is the gateway's: a service takes --listen).
    if let Some(service) = &args.service {
        let addr = listen("127.0.0.1:0")?;
        if [&args.order, &args.payment, &args.inventory]
            .iter()
            .any(|u| u.is_some())
            && std::env::args().any(|a| a.ends_with("-url"))
        {
            return Err("a service alone takes only --listen".into());
        }
        let router = match service.as_str() {
            "order" => gateway::orders::Orders::default().router(),
            "payment" => gateway::payment::Payment::default().router(),
            _ => gateway::inventory::Inventory::default().router(),
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("{service} service on http://{}", listener.local_addr()?);
        gateway::serve(listener, router, shutdown_signal()).await?;
        return Ok(());
    }

    let env_listen = std::env::var("GATEWAY_LISTEN").ok();
    let listen = |default: &str| -> Result<SocketAddr, String> {
        let text = args
            .listen
            .as_deref()
            .or(env_listen.as_deref())
            .unwrap_or(default);
        text.parse()
            .map_err(|_| format!("`{text}` is not an address like 127.0.0.1:8080"))
    };
    let config: GatewayConfig = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("reading `{path}`: {e}"))?;
            toml::from_str(&text).map_err(|e| format!("in `{path}`: {e}"))?
        }
        None => GatewayConfig::default(),
    };
    let options = Options {
        listen: listen("127.0.0.1:8080")?,
        config,
        bench_routes: args.bench_routes,
        ..Options::default()
    };

    let (addr, state, shutdown, server) = match (&args.order, &args.payment, &args.inventory) {
        (None, None, None) => {
            let embedded = start_embedded(&options).await?;
            println!(
                "embedded services: order http://{}, payment http://{}, inventory http://{}",
                embedded.order, embedded.payment, embedded.inventory
            );
            println!("fault controls: PUT/GET/DELETE /admin/faults/{{order|payment|inventory}}");
            let gateway = embedded.gateway;
            let state = embedded.state.clone();
            (gateway, state, Some(embedded), None)
        }
        (Some(o), Some(p), Some(i)) => {
            let ds = downstreams(&options.config, o, p, i)?;
            let (addr, state, shutdown, server) = start_gateway(&options, ds, None).await?;
            (addr, state, None, Some((shutdown, server)))
        }
        _ => {
            return Err(
                "give all three of --order-url, --payment-url and --inventory-url, or none".into(),
            )
        }
    };
    for d in state.downstreams.all() {
        println!("{} at {}: {}", d.name(), d.base(), d.describe());
    }
    println!("gateway on http://{addr}  (try: curl http://{addr}/api/catalog)");

    shutdown_signal().await;
    println!("shutting down: draining requests in flight");
    match (shutdown, server) {
        (Some(embedded), _) => embedded.shutdown().await,
        (None, Some((stop, server))) => {
            stop.send_replace(true);
            let _ = server.await;
        }
        (None, None) => {}
    }
    Ok(())
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
