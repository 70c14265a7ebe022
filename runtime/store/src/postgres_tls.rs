//! TLS to PostgreSQL, with libpq's `sslmode` and `sslrootcert` in the store
//! URL, so a URL that works with `psql` works with `kiln serve --store`.
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `prefer` (the default) | if the server offers TLS | only with `sslrootcert` (its chain) |
//! | `require` | yes | only with `sslrootcert` (its chain) |
//! | `verify-ca` | yes | its chain |
//! | `verify-full` | yes | its chain and the host name |
//!
//! The chain is checked against the PEM certificates in the file
//! `sslrootcert` names, or, with `sslrootcert=system` or none, against the
//! Mozilla root list built into Kiln. TLS runs on rustls (the same stack
//! Kiln's HTTP clients use). As libpq does, a URL naming only Unix
//! sockets connects without TLS: PostgreSQL offers none there.

use crate::{Result, StoreError};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A connection's driving half, as [`PgConfig::connect`] returns it.
pub(crate) type PgConnection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// What Kiln connects to PostgreSQL with: the connection settings and the
/// TLS they ask for.
#[derive(Clone)]
pub(crate) struct PgConfig {
    /// The settings `tokio_postgres` reads.
    pub(crate) config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl PgConfig {
    /// Connects, with TLS as the URL asked.
    pub(crate) async fn connect(
        &self,
    ) -> std::result::Result<(Client, PgConnection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }
}

/// How far a server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Not at all: the connection is encrypted, not authenticated.
    Nothing,
    /// Its chain up to a trusted root.
    Chain,
    /// Its chain, and that it names the host connected to.
    ChainAndHost,
}

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// The Mozilla list built into Kiln.
    Builtin,
    /// The PEM certificates in a file.
    File(String),
}

/// The TLS a store URL asks for, and the URL without what only Kiln reads.
#[derive(Debug, PartialEq, Eq)]
struct Asked {
    url: String,
    check: Check,
    roots: Roots,
}

/// Reads `sslmode` and `sslrootcert` from `url` (a `postgres://` URL or
/// libpq's `key=value` form). `tokio_postgres` knows `disable`, `prefer`
/// and `require` only, so `verify-ca` and `verify-full` are handed to it
/// as `require`, and `sslrootcert` not at all.
fn asked(url: &str) -> Result<Asked> {
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: String| -> bool {
        match key {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => return false,
        }
        true
    };
    let url = if let Some((base, query)) = url
        .split_once('?')
        .filter(|_| url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        let kept: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .filter(|(k, v)| !take(k, v.clone()))
            .collect();
        if kept.is_empty() {
            base.to_string()
        } else {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(kept)
                .finish();
            format!("{base}?{query}")
        }
    } else if url.contains("://") {
        url.to_string()
    } else {
        url.split_whitespace()
            .filter(|pair| match pair.split_once('=') {
                Some((key, value)) => !take(key.trim(), value.trim_matches('\'').to_string()),
                None => true,
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (handed, check) = match mode.as_deref() {
        None | Some("prefer") => ("prefer", None),
        Some("disable") => ("disable", None),
        Some("require") => ("require", None),
        Some("verify-ca") => ("require", Some(Check::Chain)),
        Some("verify-full") => ("require", Some(Check::ChainAndHost)),
        Some(other) => {
            return Err(StoreError::Backend(format!(
                "the PostgreSQL store URL: sslmode={other} is none of disable, prefer, \
                 require, verify-ca, verify-full"
            )));
        }
    };
    // As libpq does, a root certificate given with `prefer` or `require`
    // has the chain checked.
    let check = check.unwrap_or(if root.is_some() {
        Check::Chain
    } else {
        Check::Nothing
    });
    let roots = match root {
        None => Roots::Builtin,
        Some(root) if root == "system" => Roots::Builtin,
        Some(path) => Roots::File(path),
    };
    let separator = if url.contains("://") {
        if url.contains('?') { "&" } else { "?" }
    } else {
        " "
    };
    Ok(Asked {
        url: format!("{url}{separator}sslmode={handed}"),
        check,
        roots,
    })
}

/// The settings for `url`, with the TLS it asks for.
pub(crate) fn pg_config(url: &str) -> Result<PgConfig> {
    let asked = asked(url)?;
    // The URL may hold a password: the error names the problem only.
    let mut config: tokio_postgres::Config = asked
        .url
        .parse()
        .map_err(|e| StoreError::Backend(format!("the PostgreSQL store URL: {e}")))?;
    // As libpq does, `sslmode` is for TCP: PostgreSQL offers no TLS on a
    // Unix socket, and a URL naming only sockets connects without it.
    let hosts = config.get_hosts();
    if !hosts.is_empty()
        && hosts
            .iter()
            .all(|host| !matches!(host, tokio_postgres::config::Host::Tcp(_)))
    {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match &asked.roots {
        Roots::Builtin => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        Roots::File(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| {
                    StoreError::Backend(format!(
                        "the PostgreSQL store URL's sslrootcert {path}: {e}"
                    ))
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(StoreError::Backend(format!(
                    "the PostgreSQL store URL's sslrootcert {path} holds no usable certificate"
                )));
            }
            roots
        }
    };
    let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| StoreError::Backend(format!("PostgreSQL's TLS roots: {e}")))?;
    let verifier = Verifier {
        check: asked.check,
        chain,
        algorithms: provider.signature_verification_algorithms,
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("PostgreSQL's TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(PgConfig {
        config,
        tls: MakeRustlsConnect::new(tls),
    })
}

/// Checks a server's certificate as far as [`Check`] says; the handshake's
/// signatures are always checked, against the certificate presented.
#[derive(Debug)]
struct Verifier {
    check: Check,
    chain: Arc<WebPkiServerVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.check {
            Check::Nothing => Ok(ServerCertVerified::assertion()),
            Check::ChainAndHost => {
                self.chain
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
            Check::Chain => {
                match self.chain.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp,
                    now,
                ) {
                    // The chain is good; only the name differs.
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    )) => Ok(ServerCertVerified::assertion()),
                    other => other,
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asks(url: &str) -> (String, Check, Roots) {
        let a = asked(url).unwrap();
        (a.url, a.check, a.roots)
    }

    #[test]
    fn libpq_modes_map_to_what_tokio_postgres_knows_and_a_check() {
        assert_eq!(
            asks("postgres://kiln@db/kiln"),
            (
                "postgres://kiln@db/kiln?sslmode=prefer".into(),
                Check::Nothing,
                Roots::Builtin
            )
        );
        assert_eq!(
            asks("postgres://kiln@db/kiln?sslmode=verify-full&application_name=x"),
            (
                "postgres://kiln@db/kiln?application_name=x&sslmode=require".into(),
                Check::ChainAndHost,
                Roots::Builtin
            )
        );
        assert_eq!(
            asks("postgres://kiln@db/kiln?sslmode=require&sslrootcert=%2Fetc%2Fca.pem"),
            (
                "postgres://kiln@db/kiln?sslmode=require".into(),
                Check::Chain,
                Roots::File("/etc/ca.pem".into())
            )
        );
        assert_eq!(
            asks("host=db user=kiln sslmode=verify-ca sslrootcert=system"),
            (
                "host=db user=kiln sslmode=require".into(),
                Check::Chain,
                Roots::Builtin
            )
        );
        assert_eq!(asks("host=db sslmode=disable").0, "host=db sslmode=disable");
    }

    #[test]
    fn an_unknown_mode_is_refused_with_the_modes_there_are() {
        let error = asked("postgres://db/kiln?sslmode=always").unwrap_err();
        assert!(error.to_string().contains("verify-full"), "{error}");
    }

    #[test]
    fn a_missing_root_file_is_refused_at_start_with_its_path() {
        let Err(error) =
            pg_config("postgres://db/kiln?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
        else {
            panic!("a root file that is not there was accepted");
        };
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }
}
