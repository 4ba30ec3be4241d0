//! Ends the process when a run overstays: a blocking connect or read on a path that silently
//! drops packets would otherwise hang the bench for minutes (SYN retries) or forever.

use std::thread;
use std::time::Duration;

/// How long past its nominal end a client may run (its last transaction, joining threads).
pub const GRACE: Duration = Duration::from_secs(10);

/// Exits the process with status 2 after `limit`, whatever it is doing.
pub fn spawn(limit: Duration, what: &'static str) {
    thread::spawn(move || {
        thread::sleep(limit);
        eprintln!("weft-netbench: {what} still running after {limit:?}, giving up");
        std::process::exit(2);
    });
}
