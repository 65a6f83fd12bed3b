//! Transfers run side by side: a bounded pool of scoped threads over a list of blobs that
//! stops at the first error.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{Error, Result};

/// Run `work` on every item with at most `jobs` threads, until all are done, one fails (its
/// error is returned, and no new item starts) or `halt` says to stop. Returns how many items
/// `work` answered `true` for.
pub fn for_each<T: Sync>(
    items: &[T],
    jobs: usize,
    halt: impl Fn() -> bool + Sync,
    work: impl Fn(&T) -> Result<bool> + Sync,
) -> Result<usize> {
    let next = AtomicUsize::new(0);
    let counted = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(items.len()) {
            s.spawn(|| loop {
                if stop.load(Ordering::Relaxed) || halt() {
                    return;
                }
                let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return;
                };
                match work(item) {
                    Ok(true) => {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        first_err
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(counted.into_inner()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_stops_at_the_first_error() {
        let items: Vec<u32> = (0..20).collect();
        assert_eq!(
            for_each(&items, 3, || false, |i| Ok(i % 2 == 0)).unwrap(),
            10
        );
        let started = AtomicUsize::new(0);
        let r = for_each(
            &items,
            1,
            || false,
            |i| {
                started.fetch_add(1, Ordering::Relaxed);
                if *i == 4 {
                    Err(Error::Interrupted)
                } else {
                    Ok(true)
                }
            },
        );
        assert!(matches!(r, Err(Error::Interrupted)));
        assert_eq!(started.into_inner(), 5, "nothing starts after the failure");
        assert_eq!(for_each(&items, 2, || true, |_| Ok(true)).unwrap(), 0);
    }
}
