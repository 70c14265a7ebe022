//! Several runs may wait on one token, and the single waiter entry per token
//! an older Kiln kept is rewritten into the entry per waiting run.

use kiln_store::{Backend, Batch, MemoryBackend, Op, Store};
use kiln_types::{RunId, TokenId, Waiter};
use std::sync::Arc;

fn run(n: u64) -> RunId {
    RunId::parse(&format!("run_{n:025}")).unwrap()
}

fn waiter(n: u64, wait: u64) -> Waiter {
    Waiter {
        parent: run(n),
        wait_id: wait,
        batch: None,
    }
}

#[tokio::test]
async fn waiters_of_a_token_are_kept_per_run_and_old_entries_migrate() {
    let backend = Arc::new(MemoryBackend::new());
    let store = Store::new(backend.clone());
    let token = TokenId::parse(&format!("waitpoint_{:025}", 1)).unwrap();
    let other = TokenId::parse(&format!("waitpoint_{:025}", 2)).unwrap();
    // An older Kiln's entry: one per token.
    let legacy = format!("token-waiter/{token}").into_bytes();
    let value = serde_json::to_vec(&waiter(1, 3)).unwrap();
    backend
        .commit(vec![Op::Put(legacy.clone(), value)])
        .await
        .unwrap();

    let mut batch = Batch::default();
    batch.put_token_waiter(&token, &waiter(2, 5));
    batch.put_token_waiter(&other, &waiter(3, 1));
    store.commit(batch).await.unwrap();
    assert_eq!(store.migrate_token_waiters().await.unwrap(), 1);
    assert_eq!(store.migrate_token_waiters().await.unwrap(), 0, "once");
    assert!(backend.get(&legacy).unwrap().is_none());
    let mut waiters = store.token_waiters(&token).unwrap();
    waiters.sort_by_key(|w| w.parent.clone());
    assert_eq!(waiters, vec![waiter(1, 3), waiter(2, 5)]);

    // One run's entry goes without touching the other's.
    let mut batch = Batch::default();
    batch.delete_token_waiter(&token, &run(2), 5);
    store.commit(batch).await.unwrap();
    assert_eq!(store.token_waiters(&token).unwrap(), vec![waiter(1, 3)]);
    assert_eq!(store.token_waiters(&other).unwrap(), vec![waiter(3, 1)]);
}
