//! The `secrets` group: what environment variables and redaction add to a
//! run. Sealing snapshot layers is measured with the snapshots.

use super::report;
use std::sync::Arc;
use std::time::Instant;

pub async fn secrets_bench() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let backend = Arc::new(kiln_store::SledBackend::open(&dir.path().join("store")).expect("sled"));
    let key = Arc::new(kiln_store::SealKey::from_bytes(&[5; 32]));
    let store = kiln_store::Store::new(backend).sealed(key.clone());
    let vars: Vec<(String, String, bool)> = (0..20)
        .map(|i| (format!("VAR_{i}"), format!("sk_live_{i:040}"), i % 2 == 0))
        .collect();
    store.set_env_vars(&vars).await.expect("sets");

    // A task's `env::var`: the store read (opening the stored value), then
    // sealing it again for the journal entry.
    let mut read = Vec::new();
    for i in 0..10_000 {
        let t = Instant::now();
        let var = store
            .env_var(&format!("VAR_{}", i % 20))
            .expect("reads")
            .expect("is set");
        let sealed = key
            .seal(b"env-var/run/1/VAR", var.value.as_bytes())
            .expect("seals");
        read.push(t.elapsed());
        std::hint::black_box(sealed);
    }
    report("env var read + seal for the journal", &mut read);

    // What each slice pays to know the environment's secrets.
    let mut all = Vec::new();
    for _ in 0..2_000 {
        let t = Instant::now();
        let secrets = store
            .env_vars()
            .expect("reads")
            .into_iter()
            .filter(|v| v.secret);
        let redactor = kiln_sandbox::Redactor::new(secrets.map(|v| v.value));
        all.push(t.elapsed());
        std::hint::black_box(redactor);
    }
    report("redactor of 20 variables (10 secret), built", &mut all);

    // What a slice pays while the variables have not changed: a copy of
    // the environment's cached redactor.
    let cached = kiln_sandbox::Redactor::new(vars.iter().filter(|v| v.2).map(|v| v.1.clone()));
    let mut fork = Vec::new();
    for _ in 0..100_000 {
        let t = Instant::now();
        let own = cached.fork();
        fork.push(t.elapsed());
        std::hint::black_box(own);
    }
    report("redactor of 10 secrets, from the cache", &mut fork);

    let redactor = kiln_sandbox::Redactor::new(vars.iter().filter(|v| v.2).map(|v| v.1.clone()));
    let clean = "x".repeat(1024);
    let dirty = format!("{}Bearer {}", "x".repeat(1000), vars[0].1);
    for (name, line) in [("clean", &clean), ("holding a secret", &dirty)] {
        let mut masked = Vec::new();
        for _ in 0..100_000 {
            let t = Instant::now();
            let out = redactor.redact(line);
            masked.push(t.elapsed());
            std::hint::black_box(out);
        }
        report(
            &format!("mask 10 secrets in a 1 KiB line, {name}"),
            &mut masked,
        );
    }
}
