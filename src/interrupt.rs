//! Ctrl-C for long `strata` verbs (build, pull): the first SIGINT, SIGTERM or SIGHUP sets a
//! flag the work checks at safe points, so it can stop cleanly (remove its half-made state,
//! keep what the next try can reuse); a second one exits at once with 130.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Start catching the signals (once per process; a build that pulls its base asks twice).
pub fn catch() {
    static HANDLERS: Once = Once::new();
    HANDLERS.call_once(|| {
        for signal in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, &INTERRUPTED);
            let _ = signal_hook::flag::register(signal, &INTERRUPTED);
        }
    });
}

/// Whether one of the signals came.
pub fn requested() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
