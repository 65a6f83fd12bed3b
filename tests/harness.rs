//! Checks of the test harness itself: a hung daemon must fail one test quickly and leave
//! nothing mounted or running.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use common::*;

#[test]
fn hung_daemon_fails_the_test_with_timeout_and_is_cleaned_up() {
    let fx = Fixture::new(1);
    fx.lower(0).file("f", b"x");
    let m = fx.mount(Backend::Stratafs);
    let pid = m.daemon_pid().unwrap();
    // A stopped daemon answers nothing: every request hangs.
    kill_pid(pid, Signal::STOP);
    let start = Instant::now();
    let res = catch_unwind(AssertUnwindSafe(|| {
        m.with_timeout(2, |r| {
            let _ = std::fs::read(r.join("f"));
        })
    }));
    let elapsed = start.elapsed();
    let msg = match res {
        Ok(()) => panic!("with_timeout returned although the daemon was stopped"),
        Err(p) => p.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(msg.contains("TIMEOUT"), "unexpected panic message: {msg}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    drop(m);
    assert!(mounted_type(&fx.mnt).is_none(), "still mounted after drop");
    assert!(!pid_alive(pid), "daemon {pid} still alive after drop");
}

#[test]
fn drop_unmounts_both_backends_even_with_open_files() {
    for b in Backend::ALL {
        let fx = Fixture::new(1);
        fx.lower(0).file("f", b"x");
        let m = fx.mount(b);
        let pid = m.daemon_pid();
        let open = std::fs::File::open(m.path("f")).unwrap();
        drop(m);
        assert!(
            mounted_type(&fx.mnt).is_none(),
            "{b:?} still mounted after drop"
        );
        if let Some(pid) = pid {
            assert!(!pid_alive(pid), "daemon {pid} still alive after drop");
        }
        drop(open);
    }
}
