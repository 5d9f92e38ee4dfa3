//! Following long work until it is done: progress on stderr when it is a terminal, polling the
//! server twice a second, and riding out a server that restarts (transient failures are retried
//! for a while before the command gives up).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::operator::client::{ApiClient, ClientError};

/// How long the server may be unreachable (restarting) before a follower gives up.
const OUTAGE: Duration = Duration::from_secs(60);
/// Time between two polls.
const POLL: Duration = Duration::from_millis(500);

/// A progress bar on stderr if it is a terminal.
pub(super) fn bar(total: usize, label: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "  {label} [{{bar:40}}] {{pos}}/{{len}} {{msg}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Polls `poll` until it says done or `wait` has passed, and returns its last answer. A poll
/// that fails transiently (the server restarting) is retried for up to a minute.
pub(super) fn until<T>(
    client: &ApiClient,
    wait: Duration,
    mut poll: impl FnMut(&ApiClient) -> Result<(T, bool), ClientError>,
) -> Result<T> {
    let deadline = Instant::now() + wait;
    let mut outage: Option<Instant> = None;
    loop {
        match poll(client) {
            Ok((status, done)) => {
                outage = None;
                if done || Instant::now() >= deadline {
                    return Ok(status);
                }
            }
            Err(e) if e.is_transient() => {
                let since = *outage.get_or_insert_with(Instant::now);
                if since.elapsed() >= OUTAGE {
                    return Err(Error::Failed(format!(
                        "the onboarder stayed unreachable for {}s: {e}",
                        OUTAGE.as_secs()
                    )));
                }
                tracing::warn!("polling the onboarder: {e}; retrying");
            }
            Err(e) => return Err(e.into()),
        }
        std::thread::sleep(POLL);
    }
}
