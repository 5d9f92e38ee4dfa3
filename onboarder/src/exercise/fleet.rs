//! The fleet of agents a phase drives, and the image a firmware phase ships.

use std::sync::Arc;
use std::time::Duration;

use device_agent::Agent;

/// Every agent running its loop (sessions, commands, renewals, updates) in the background.
pub struct Fleet {
    stop: tokio::sync::watch::Sender<bool>,
    runners: Vec<tokio::task::JoinHandle<()>>,
}

/// Agents whose loop starts per second. Devices come online over time; 100,000 simulated
/// agents started in the same instant, on the simulator's few UDP sockets, overflow the
/// sockets' buffers (millions of datagrams dropped), their handshakes time out and are retried,
/// and the fleet never connects. At this rate 100,000 take a little over three minutes.
const STARTS_PER_SECOND: f64 = 500.0;

impl Fleet {
    /// Starts every agent's loop, [`STARTS_PER_SECOND`] at a time.
    pub fn start(agents: &[Arc<Agent>]) -> Fleet {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let runners = agents
            .iter()
            .enumerate()
            .map(|(i, agent)| {
                let (agent, mut stopped) = (agent.clone(), stopped.clone());
                let after = Duration::from_secs_f64(i as f64 / STARTS_PER_SECOND);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stopped.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(after) => {}
                    }
                    let _ = agent
                        .run(async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        })
                        .await;
                })
            })
            .collect();
        Fleet { stop, runners }
    }

    /// Stops every loop and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for r in self.runners {
            let _ = r.await;
        }
    }
}

/// A firmware image of `size` bytes that does not compress (xorshift from `seed`), so a
/// transfer is honest; each seed gives another image.
pub fn incompressible_image(size: usize, seed: u64) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut image = Vec::with_capacity(size + 8);
    while image.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        image.extend_from_slice(&x.to_le_bytes());
    }
    image.truncate(size);
    image
}
