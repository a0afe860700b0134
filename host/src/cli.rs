//! The `granary` command line: `serve` runs a silo; the other commands are HTTP clients
//! of a running one.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use reqwest::Method;

use crate::config::{Config, LogFormat};
use crate::silo::{RunningSilo, Silo};

#[derive(Parser)]
#[command(
    name = "granary",
    version,
    about = "Sandboxed, stateful WebAssembly grains"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Client {
    /// Base URL of a running silo.
    #[arg(long, env = "GRANARY_ADDR", default_value = "http://127.0.0.1:8080")]
    addr: String,
    /// Bearer token for admin routes.
    #[arg(long, env = "GRANARY_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a silo serving the grains in a directory.
    Serve {
        /// Directory of `<kind>.wasm` components.
        #[arg(long)]
        grains: Option<PathBuf>,
        /// Data directory (sled database and compile cache).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Address of the HTTP gateway.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// `text` or `json`.
        #[arg(long)]
        log_format: Option<LogFormat>,
    },
    /// Call a grain: `granary call counter/alice increment 5`.
    Call {
        /// `KIND/KEY`
        target: String,
        method: String,
        /// JSON payload (empty when omitted).
        json: Option<String>,
        #[command(flatten)]
        client: Client,
    },
    /// List the kinds a silo serves.
    Kinds {
        #[command(flatten)]
        client: Client,
    },
    /// Show a grain's durable reminders and their last tick outcomes.
    Reminders {
        /// `KIND/KEY`
        target: String,
        #[command(flatten)]
        client: Client,
    },
    /// List a silo's live activations.
    Grains {
        #[command(flatten)]
        client: Client,
    },
    /// Deploy a new version of a kind to a running silo (validated first).
    Deploy {
        /// The component (`.wasm`).
        file: PathBuf,
        /// The kind; defaults to the file name without `.wasm` (`_` read as `-`).
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        client: Client,
    },
    /// Ask a silo to drain and exit.
    Drain {
        #[command(flatten)]
        client: Client,
    },
    /// Scaffold a grain crate that builds and runs as is: `granary new notes`.
    New(crate::scaffold::NewArgs),
    /// Build a grain crate, serve it, and rebuild and redeploy it on every change.
    Dev(crate::dev::DevArgs),
}

impl clap::ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[LogFormat::Text, LogFormat::Json]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }))
    }
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr.trim_end_matches('/'))
    }

    /// Sends a request to `path` (with the bearer token when one is given) and prints the
    /// answer.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> anyhow::Result<ExitCode> {
        let url = self.url(path);
        let mut request = reqwest::Client::new().request(method, &url).body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("requesting {url}"))?;
        print_response(response).await
    }
}

/// `KIND/KEY` into its URL path segments.
fn grain_path(target: &str, example: &str) -> anyhow::Result<String> {
    let Some((kind, key)) = target.split_once('/') else {
        bail!("target must be KIND/KEY, e.g. {example}");
    };
    Ok(format!("{}/{}", encode_segment(kind), encode_segment(key)))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            grains,
            data,
            listen,
            config,
            log_format,
        } => {
            let mut config = Config::load(config.as_deref(), std::env::vars())?;
            if let Some(g) = grains {
                config.grains_dir = g;
            }
            if let Some(d) = data {
                config.data_dir = d;
            }
            if let Some(l) = listen {
                config.listen = l;
            }
            if let Some(f) = log_format {
                config.log_format = f;
            }
            serve(config).await
        }
        Command::Call {
            target,
            method,
            json,
            client,
        } => call(&client, &target, &method, json).await,
        Command::Kinds { client } => client.send(Method::GET, "/v1/kinds", "").await,
        Command::Grains { client } => client.send(Method::GET, "/v1/grains", "").await,
        Command::Reminders { target, client } => {
            let path = format!(
                "/v1/grains/{}/reminders",
                grain_path(&target, "sync-worker/reports")?
            );
            client.send(Method::GET, &path, "").await
        }
        Command::Drain { client } => client.send(Method::POST, "/v1/admin/drain", "").await,
        Command::New(args) => crate::scaffold::run(args),
        Command::Dev(args) => crate::dev::run(args).await,
        Command::Deploy { file, kind, client } => deploy(&client, &file, kind).await,
    }
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift_codegen=warn")
    });
    // Colours only for a person at a terminal: log files and collectors (kubectl logs)
    // must not receive escape sequences.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    init_logging(config.log_format);
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("binding {}", config.listen))?;
    listener.set_nonblocking(true)?;
    // A fixed, parseable line: scripts and tests that pass `--listen 127.0.0.1:0` learn
    // the port from it. Probes are answered from here on (`/readyz` 503 until serving).
    println!("granary: listening on http://{}", listener.local_addr()?);
    let early = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
    let starting = tokio_util::sync::CancellationToken::new();
    let stop_starting = starting.clone();
    let starting_server = tokio::spawn(async move {
        let serve = axum::serve(early, crate::gateway::starting_router())
            .with_graceful_shutdown(stop_starting.cancelled_owned());
        let _ = serve.await;
    });
    let open = tokio::task::spawn_blocking(move || Silo::open(config));
    let silo = tokio::select! {
        opened = open => opened??,
        trigger = signal() => {
            tracing::info!(trigger, "stopped while starting; nothing to drain");
            return Ok(ExitCode::SUCCESS);
        }
    };
    starting.cancel();
    let _ = starting_server.await;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let running = RunningSilo::start_on(silo.clone(), listener).await?;
    let trigger = wait_for_drain_trigger(&silo).await;
    tracing::info!(trigger, "draining");
    let shutdown = running.shutdown();
    tokio::pin!(shutdown);
    let ok = tokio::select! {
        ok = &mut shutdown => ok,
        trigger = signal() => {
            tracing::warn!(trigger, "second signal: forcing exit after a flush");
            if let Err(e) = silo.storage.flush() {
                tracing::error!(error = %e, "final flush failed");
            }
            false
        }
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn wait_for_drain_trigger(silo: &Silo) -> &'static str {
    tokio::select! {
        trigger = signal() => trigger,
        _ = silo.lifecycle.drain_requested.cancelled() => "admin request",
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        unreachable!()
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

async fn call(
    client: &Client,
    target: &str,
    method: &str,
    json: Option<String>,
) -> anyhow::Result<ExitCode> {
    let grain = grain_path(target, "counter/alice")?;
    let body = json.unwrap_or_default();
    if !body.is_empty() {
        serde_json::from_str::<serde_json::Value>(&body)
            .with_context(|| format!("payload is not valid JSON: {body}"))?;
    }
    let path = format!("/v1/grains/{grain}/{}", encode_segment(method));
    client.send(Method::POST, &path, body).await
}

async fn deploy(
    client: &Client,
    file: &std::path::Path,
    kind: Option<String>,
) -> anyhow::Result<ExitCode> {
    let kind = match kind {
        Some(k) => k,
        None => file
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| s.replace('_', "-"))
            .with_context(|| {
                format!(
                    "cannot take a kind name from {}; pass --kind",
                    file.display()
                )
            })?,
    };
    crate::grain_id::validate_kind(&kind).context("use --kind to name the kind")?;
    let wasm = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    eprintln!(
        "deploying {} ({} KiB) as {kind}; the silo validates and compiles it...",
        file.display(),
        wasm.len() / 1024
    );
    client
        .send(Method::PUT, &format!("/v1/kinds/{kind}"), wasm)
        .await
}

async fn print_response(response: reqwest::Response) -> anyhow::Result<ExitCode> {
    let status = response.status();
    let text = response.text().await.context("reading the response")?;
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .filter(|v| v.is_object() || v.is_array())
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if status.is_success() {
        println!("{pretty}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{status}: {pretty}");
        Ok(ExitCode::from(2))
    }
}

/// Percent-encodes a path segment (keys may contain `/`, spaces, anything printable).
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("alice"), "alice");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("ü"), "%C3%BC");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
