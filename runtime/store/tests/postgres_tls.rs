//! The PostgreSQL store over TLS, with libpq's `sslmode` and `sslrootcert`
//! in its URL, against a throwaway server that takes TLS connections only
//! (its `pg_hba.conf` rejects plain ones on TCP) and a CA of its own.

#[path = "../../../tests/support/postgres.rs"]
mod postgres;

use kiln_store::{Backend, Op, PostgresBackend};

/// A free loopback port for the server.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server taking TLS only, and a URL to its database `kiln` with
/// `host` and `params`.
struct Tls {
    server: postgres::Postgres,
    port: u16,
}

impl Tls {
    fn start() -> Tls {
        let port = free_port();
        let server = postgres::Postgres::start_with_tls(port);
        server.database("kiln");
        Tls { server, port }
    }

    fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://kiln@{host}:{}/kiln?{params}", self.port)
    }

    fn ca(&self) -> String {
        self.server.ca().to_string_lossy().into_owned()
    }
}

/// Writes a key, reads it back and closes the store.
fn round_trip(url: &str) {
    let backend = PostgresBackend::open(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    futures_executor::block_on(backend.commit(vec![Op::Put(b"tls".to_vec(), b"yes".to_vec())]))
        .unwrap();
    assert_eq!(backend.get(b"tls").unwrap().as_deref(), Some(&b"yes"[..]));
}

/// The reason opening `url` fails.
fn refused(url: &str) -> String {
    match PostgresBackend::open(url) {
        Ok(_) => panic!("{url} was accepted"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn a_store_reached_over_tls_checks_the_certificate_as_sslmode_says() {
    let tls = Tls::start();
    let ca = tls.ca();

    // The server takes no plain connection on TCP: whatever works below
    // went over TLS.
    let plain = refused(&tls.url("localhost", "sslmode=disable"));
    assert!(
        plain.contains("no encryption") || plain.contains("rejects"),
        "{plain}"
    );

    // Its CA and its name: the full check passes.
    round_trip(&tls.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    // Encryption without a check, as libpq's `require` and the default.
    round_trip(&tls.url("127.0.0.1", "sslmode=require"));
    round_trip(&tls.url("127.0.0.1", ""));
    // The chain without the name: `verify-ca`, and `require` given a root.
    round_trip(&tls.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")));
    round_trip(&tls.url("127.0.0.1", &format!("sslmode=require&sslrootcert={ca}")));

    // The certificate names `localhost`, not the address.
    let wrong_name = refused(&tls.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    assert!(wrong_name.contains("certificate"), "{wrong_name}");
    // A CA of its own is in no built-in root list.
    let unknown_ca = refused(&tls.url("localhost", "sslmode=verify-full"));
    assert!(unknown_ca.contains("certificate"), "{unknown_ca}");
    let unknown_ca = refused(&tls.url("localhost", "sslrootcert=system"));
    assert!(unknown_ca.contains("certificate"), "{unknown_ca}");

    // On the server's Unix socket, as with libpq, `sslmode` is not read.
    let socket = tls.server.url().replacen("/postgres?", "/kiln?", 1);
    round_trip(&format!("{socket}&sslmode=verify-full&sslrootcert={ca}"));
}
