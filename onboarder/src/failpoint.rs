//! Crash points for the kill tests: a process started with `ONBOARDER_FAILPOINT=NAME` aborts
//! (like a SIGKILL: no destructor, no flush) when it reaches the point `NAME`. Nothing happens
//! otherwise; the points sit between the steps of multi-step operations whose recovery the
//! tests prove.

/// Aborts the process if `ONBOARDER_FAILPOINT` is `name`.
pub fn hit(name: &str) {
    if std::env::var("ONBOARDER_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
