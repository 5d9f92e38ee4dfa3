//! `onboarder`: the server and its operator commands. A thin main: it parses the command line,
//! sets up logging, and hands over to the library (`init`, `serve`, `demo`, or the operator
//! commands of `onboarder::operator::cli`).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use onboarder::demo::{self, DemoOptions};
use onboarder::operator::cli::{self, Cli, Command, DemoArgs, LogFormat, ServeArgs};
use onboarder::server::{Backends, Listen, Options, Server};

fn main() -> ExitCode {
    // Everything this process creates is for its owner only: the data directory holds keys
    // and the store, whose files its database library creates with the process umask.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    let level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command {
        Command::Completions { shell } => {
            cli::completions(shell);
            Ok(())
        }
        Command::Man { out } => cli::man_pages(&out)
            .map(|n| eprintln!("wrote {n} manual pages into {}", out.display()))
            .with_context(|| format!("writing the manual pages into {}", out.display())),
        Command::Init(args) => cli::init(cli.dir, args).map_err(Into::into),
        Command::Serve(args) => runtime().and_then(|rt| rt.block_on(serve(&cli.dir, args))),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(run_demo(args))),
        Command::Radius(cmd) => cli::radius(cli.dir, cmd).map_err(Into::into),
        command => cli::run(cli.dir, command).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<onboarder::error::Error>()
                .is_some_and(cli::is_broken_pipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn serve(dir: &Path, args: ServeArgs) -> Result<()> {
    let backends = match &args.store {
        Some(url) => Some(
            Backends::postgres(dir, url)
                .with_context(|| "opening the PostgreSQL store".to_string())?,
        ),
        None => None,
    };
    let server = Server::start_with(
        dir,
        Options {
            backends,
            listen: Listen {
                quic: args.listen,
                api: args.api,
                https: args.https,
                coap: args.coap,
            },
            ..Options::default()
        },
    )
    .await
    .with_context(|| format!("starting the onboarder in {}", dir.display()))?;
    println!(
        "onboarder serving devices on {} (QUIC), admin API on http://{}",
        server.quic_addr(),
        server.api_addr()
    );
    // Under systemd (Type=notify): ready once every listener is bound and the store open.
    device_agent::systemd::notify(&format!(
        "READY=1\nSTATUS=serving devices on {} (QUIC)",
        server.quic_addr()
    ));
    shutdown_signal().await;
    tracing::info!("shutting down");
    device_agent::systemd::notify("STOPPING=1");
    server.shutdown().await;
    Ok(())
}

async fn run_demo(args: DemoArgs) -> Result<()> {
    let report = demo::run(DemoOptions {
        devices: args.devices,
        out: args.out,
        concurrency: args.concurrency,
        progress: std::io::stderr().is_terminal(),
        decommission_percent: args.decommission,
        transport: args.transport,
    })
    .await?;
    if !args.json {
        for (name, p) in &report.phases {
            println!(
                "{name:>12}: {} ok, {} failed in {:.2}s ({:.1}/s, p50 {:.1} ms, p99 {:.1} ms)",
                p.ok, p.failed, p.seconds, p.per_second, p.p50_ms, p.p99_ms
            );
        }
        if let Some(out) = &report.out {
            println!("everything is in {}", out.display());
        }
    }
    println!("{}", serde_json::to_string(&report)?);
    let failed: usize = report.phases.values().map(|p| p.failed).sum();
    anyhow::ensure!(failed == 0, "{failed} device phases failed");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
