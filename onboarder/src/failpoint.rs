//! Crash points for the kill tests. A process started with `ONBOARDER_FAILPOINT=NAME` stops
//! when it reaches the point `NAME`: it says `failpoint NAME reached` on stderr and holds there
//! (the rest of the server runs on) until the test kills it with SIGKILL. Nothing happens
//! otherwise; the points sit between the steps of multi-step operations whose recovery the
//! tests prove.

/// Holds the calling thread for good if `ONBOARDER_FAILPOINT` is `name`.
pub fn hit(name: &str) {
    if std::env::var("ONBOARDER_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name} reached");
        loop {
            std::thread::park();
        }
    }
}
