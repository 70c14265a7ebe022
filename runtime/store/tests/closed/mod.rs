//! Waiting for sled to let go of a store, for the store's tests that read
//! its files after a backend is dropped.

use std::path::Path;

/// Waits until sled's last thread has let go of the store in `dir` (a
/// moment after the backend is dropped): nothing writes its files after.
pub fn wait_closed(dir: &Path) {
    let db = std::fs::File::open(dir.join("db")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.try_lock().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "sled still holds the store"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    db.unlock().unwrap();
}
