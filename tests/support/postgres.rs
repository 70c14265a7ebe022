//! A throwaway PostgreSQL server for one test: made and started by
//! `scripts/postgres start`, stopped by its PID and removed when dropped.
//! Shared by the store's tests, the end-to-end tests and the benchmarks,
//! each of which uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running PostgreSQL server in its own directory, listening on a Unix
/// socket there.
pub struct Postgres {
    dir: PathBuf,
    url: String,
    script: PathBuf,
}

impl Postgres {
    /// Starts a new server (Debian's `postgresql`, installed by
    /// `scripts/postgres-deps`, which the test command runs first).
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// Starts a new server that also listens on 127.0.0.1 at `port` with
    /// TLS only, its certificate (for `localhost`) signed by the CA in
    /// [`Postgres::ca`].
    pub fn start_with_tls(port: u16) -> Postgres {
        Postgres::start_with(Some(port))
    }

    fn start_with(tls_port: Option<u16>) -> Postgres {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .find(|dir| dir.join("scripts/postgres").is_file())
            .expect("the repository's scripts/postgres")
            .to_path_buf();
        let script = root.join("scripts/postgres");
        let mut command = Command::new(&script);
        if let Some(port) = tls_port {
            command.env("KILN_PG_TLS_PORT", port.to_string());
        }
        let out = command
            .arg("start")
            .output()
            .expect("running scripts/postgres start");
        assert!(
            out.status.success(),
            "scripts/postgres start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout)
            .expect("a URL")
            .trim()
            .to_string();
        let dir = PathBuf::from(url.rsplit_once("host=").expect("a socket directory").1);
        Postgres { dir, url, script }
    }

    /// Stops the server by its PID (PostgreSQL's immediate shutdown) and
    /// removes its directory.
    pub fn stop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }

    /// The CA certificate (PEM) that signed a TLS server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("tls/ca.crt")
    }

    /// The store URL for `kiln serve --store`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Postgres {
    /// A new, empty database on the server, and its store URL.
    pub fn database(&self, name: &str) -> String {
        let status = Command::new("psql")
            .args(["-q", "-X", "-v", "ON_ERROR_STOP=1", &self.url, "-c"])
            .arg(format!("CREATE DATABASE {name}"))
            .status()
            .expect("running psql");
        assert!(status.success(), "creating the database {name}");
        self.url.replacen("/postgres?", &format!("/{name}?"), 1)
    }

    /// What `sql` answers on the database at `url`, unaligned, one row a
    /// line.
    pub fn query(&self, url: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-q",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                url,
                "-c",
                sql,
            ])
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}
