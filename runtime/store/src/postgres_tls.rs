//! TLS to PostgreSQL, with libpq's `sslmode` and `sslrootcert` in the store
//! URL, read with libpq's meaning.
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `allow`, `prefer` (the default) | if the server offers TLS | no |
//! | `require` | yes | only with `sslrootcert` (its chain) |
//! | `verify-ca` | yes | its chain |
//! | `verify-full` | yes | its chain and the host name |
//!
//! The chain is checked against the PEM certificates in the file
//! `sslrootcert` names, or against the Mozilla root list built into Kiln
//! (with `sslrootcert=system`, which as in libpq 16 means `verify-full`).
//! TLS runs on rustls (the same stack Kiln's HTTP clients use). As libpq
//! does, a URL naming only Unix sockets connects without TLS: PostgreSQL
//! offers none there.

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
/// libpq's `key=value` form), leaving the rest of it byte for byte.
/// `tokio_postgres` knows `disable`, `prefer` and `require` only, so
/// `verify-ca` and `verify-full` are handed to it as `require`, and
/// `sslrootcert` not at all.
fn asked(url: &str) -> Result<Asked> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let (rest, taken) = if is_url {
        take_from_query(url)
    } else {
        take_from_pairs(url)?
    };
    let mut mode = None;
    let mut root = None;
    for (key, value) in taken {
        match key.as_str() {
            "sslmode" => mode = Some(value),
            _ => root = Some(value),
        }
    }
    // libpq (16 on) checks the host name against the system's roots, and
    // nothing weaker.
    if root.as_deref() == Some("system") {
        match mode.as_deref() {
            None | Some("verify-full") => mode = Some("verify-full".into()),
            Some(other) => {
                return Err(StoreError::Backend(format!(
                    "the PostgreSQL store URL: sslmode={other} may not be used with \
                     sslrootcert=system (use verify-full)"
                )));
            }
        }
    }
    let (handed, check) = match mode.as_deref() {
        // libpq's `allow` tries without TLS first; Kiln tries with it first.
        None | Some("prefer") | Some("allow") => ("prefer", Check::Nothing),
        Some("disable") => ("disable", Check::Nothing),
        // As libpq does, `require` given a root certificate checks the
        // chain.
        Some("require") if root.is_some() => ("require", Check::Chain),
        Some("require") => ("require", Check::Nothing),
        Some("verify-ca") => ("require", Check::Chain),
        Some("verify-full") => ("require", Check::ChainAndHost),
        Some(other) => {
            return Err(StoreError::Backend(format!(
                "the PostgreSQL store URL: sslmode={other} is none of disable, allow, prefer, \
                 require, verify-ca, verify-full"
            )));
        }
    };
    let roots = match root {
        None => Roots::Builtin,
        Some(root) if root == "system" => Roots::Builtin,
        Some(path) => Roots::File(path),
    };
    let url = if is_url {
        let separator = if rest.contains('?') { "&" } else { "?" };
        format!("{rest}{separator}sslmode={handed}")
    } else {
        // First, so a trailing backslash in the rest escapes nothing of it.
        format!("sslmode={handed} {rest}")
    };
    Ok(Asked { url, check, roots })
}

/// Whether a setting is one Kiln reads itself.
fn kilns(key: &str) -> bool {
    key == "sslmode" || key == "sslrootcert"
}

/// Takes Kiln's settings out of a URL's query: the URL without them (every
/// other parameter as it was written), and them, percent-decoded (a `+`
/// stays a `+`, as `tokio_postgres` reads it).
fn take_from_query(url: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), Vec::new());
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for segment in query.split('&') {
        let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
        let key = decode(key);
        if kilns(&key) {
            taken.push((key, decode(value)));
        } else if !segment.is_empty() {
            kept.push(segment);
        }
    }
    if kept.is_empty() {
        (base.to_string(), taken)
    } else {
        (format!("{base}?{}", kept.join("&")), taken)
    }
}

/// Takes Kiln's settings out of libpq's `key = value` form (spaces around
/// `=` allowed, a value quoted with `'` and `\` escaping): the string
/// without them (every other setting as it was written), and them.
fn take_from_pairs(text: &str) -> Result<(String, Vec<(String, String)>)> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end = text.len();
    let at = |i: usize| chars.get(i).map_or(end, |(at, _)| *at);
    let mut rest = String::new();
    let mut taken = Vec::new();
    let mut kept_to = 0;
    let mut i = 0;
    let malformed =
        || StoreError::Backend("the PostgreSQL store URL: a setting is not `key=value`".into());
    loop {
        while chars.get(i).is_some_and(|(_, c)| c.is_whitespace()) {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let start = i;
        while chars
            .get(i)
            .is_some_and(|(_, c)| !c.is_whitespace() && *c != '=')
        {
            i += 1;
        }
        let key = &text[at(start)..at(i)];
        while chars.get(i).is_some_and(|(_, c)| c.is_whitespace()) {
            i += 1;
        }
        if chars.get(i).map(|(_, c)| *c) != Some('=') || key.is_empty() {
            return Err(malformed());
        }
        i += 1;
        while chars.get(i).is_some_and(|(_, c)| c.is_whitespace()) {
            i += 1;
        }
        let mut value = String::new();
        if chars.get(i).map(|(_, c)| *c) == Some('\'') {
            i += 1;
            loop {
                match chars.get(i).map(|(_, c)| *c) {
                    None => return Err(malformed()),
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        value.extend(chars.get(i + 1).map(|(_, c)| *c));
                        i += 2;
                    }
                    Some(c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some((_, c)) = chars.get(i).filter(|(_, c)| !c.is_whitespace()) {
                if *c == '\\' {
                    value.extend(chars.get(i + 1).map(|(_, c)| *c));
                    i += 2;
                } else {
                    value.push(*c);
                    i += 1;
                }
            }
        }
        if kilns(key) {
            rest.push_str(&text[kept_to..at(start)]);
            kept_to = at(i);
            taken.push((key.to_string(), value));
        }
    }
    rest.push_str(&text[kept_to..]);
    Ok((rest, taken))
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
            asks("postgresql://kiln@db/kiln?sslmode=require&sslrootcert=%2Fetc%2Fa+b.pem"),
            (
                "postgresql://kiln@db/kiln?sslmode=require".into(),
                Check::Chain,
                Roots::File("/etc/a+b.pem".into())
            )
        );
        assert_eq!(
            asks("postgres://db/kiln?sslmode=prefer&sslrootcert=ca.pem").1,
            Check::Nothing,
            "libpq's prefer never checks"
        );
        assert_eq!(
            asks("host=db user=kiln sslmode=verify-ca sslrootcert=ca.pem"),
            (
                "sslmode=require host=db user=kiln  ".into(),
                Check::Chain,
                Roots::File("ca.pem".into())
            )
        );
        assert_eq!(
            asks("host=db sslmode=disable").0,
            "sslmode=disable host=db "
        );
        assert_eq!(asks("sslmode=allow").0, "sslmode=prefer ");
    }

    #[test]
    fn every_other_setting_is_left_as_written() {
        // A `+` and escapes mean what tokio_postgres reads them as.
        assert_eq!(
            asks("postgres://db/kiln?options=-c%20a%3D1&application_name=my+app&sslmode=require").0,
            "postgres://db/kiln?options=-c%20a%3D1&application_name=my+app&sslmode=require"
        );
        // Spaces around `=`, quotes and escapes in libpq's form.
        assert_eq!(
            asks("host = db  sslmode = 'verify-full'  options='-c a=1' sslrootcert=c\\ a.pem"),
            (
                "sslmode=require host = db    options='-c a=1' ".into(),
                Check::ChainAndHost,
                Roots::File("c a.pem".into())
            )
        );
        // A trailing backslash escapes nothing Kiln adds.
        assert_eq!(
            asks("sslmode=verify-full password=abc\\").0,
            "sslmode=require  password=abc\\"
        );
        assert!(asked("host=db sslmode").is_err());
        assert!(asked("host='db").is_err());
    }

    #[test]
    fn the_system_roots_check_the_host_name_as_libpq_does() {
        assert_eq!(
            asks("postgres://db/kiln?sslrootcert=system"),
            (
                "postgres://db/kiln?sslmode=require".into(),
                Check::ChainAndHost,
                Roots::Builtin
            )
        );
        let weaker = asked("postgres://db/kiln?sslrootcert=system&sslmode=verify-ca").unwrap_err();
        assert!(weaker.to_string().contains("verify-full"), "{weaker}");
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
