//! Connecting to the database, over TLS where the settings ask (`crate::tls` reads them):
//! [`Target`] is what the opener, the writer and the listener each connect with.
//!
//! TLS is rustls with the `ring` provider, chosen per store (never the process-wide
//! default provider, which an application may set to something else). The verifier is
//! ours, wrapping rustls' `WebPkiServerVerifier`: `verify-full` is that verifier as it is,
//! `verify-ca` ignores only its host-name mismatch (the chain is checked first, so a
//! mismatch is only ever reported for a trusted chain), `prefer` and `require` (without
//! `sslrootcert`) check nothing but the handshake's signatures. Its refusals say which
//! parameter to set.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use postgres::config::{Host as PgHost, SslMode as PgSslMode};
use postgres::{Client, Config, NoTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, OtherError,
    RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{Host, SslMode, TlsOptions};

/// What a connection is made with: the client's settings (host, user, timeouts, ...) and
/// TLS, if any.
#[derive(Clone)]
pub(crate) struct Target {
    /// The client's settings (its `ssl_mode` set from the TLS settings).
    pub(crate) config: Config,
    /// The TLS connector; `None`: plain TCP or a Unix socket (`sslmode=disable`).
    tls: Option<MakeRustlsConnect>,
}

impl Target {
    /// The target for `config` with the TLS `options` (`sslmode` defaulting by the hosts of
    /// `config`, see [`crate::tls::default_mode`]); reads the certificate and key files
    /// now, so a bad file fails `open`, not a later reconnect. The error says what to fix.
    pub(crate) fn new(mut config: Config, options: &TlsOptions) -> Result<Target, String> {
        let hosts = config.get_hosts().iter().map(|host| match host {
            PgHost::Tcp(name) => Host::Tcp(name),
            #[cfg(unix)]
            PgHost::Unix(_) => Host::Unix,
        });
        let addrs = config.get_hostaddrs().iter().map(|ip| Host::Addr(*ip));
        let hosts: Vec<Host<'_>> = hosts.chain(addrs).collect();
        let mode = options.mode_for(hosts);
        let why = match options.mode {
            Some(_) => "",
            None if mode == SslMode::Disable => " (the default for a loopback host or Unix socket)",
            None => " (the default for a host that is not loopback)",
        };
        let client = match (&options.client_cert, &options.client_key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => {
                return Err(
                    "sslcert and sslkey go together: give both the client certificate and its private key".into(),
                )
            }
        };
        if mode == SslMode::Disable {
            if options.root_cert.is_some() || client.is_some() {
                return Err(format!(
                    "sslrootcert, sslcert or sslkey is given but sslmode is disable{why}, which would ignore them; set sslmode=verify-full (or verify-ca, require) to connect over TLS, or leave them out"
                ));
            }
            config.ssl_mode(PgSslMode::Disable);
            return Ok(Target { config, tls: None });
        }
        // ring builds with a C compiler alone (aws-lc-rs, rustls' default, needs more); rustls
        // deprecates it for lacking post-quantum key exchange, which PostgreSQL servers
        // (OpenSSL before 3.5) do not offer anyway.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // `require` with a CA checks the chain, as libpq does.
        let checked = match mode {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            _ => options.root_cert.is_some(),
        };
        let verifier = Verifier {
            webpki: match checked {
                true => Some(webpki(options.root_cert.as_deref(), &provider, mode, why)?),
                false => None,
            },
            check_name: mode == SslMode::VerifyFull,
            roots: match options.root_cert.as_deref() {
                Some(path) if path != Path::new("system") => {
                    format!("the CA in sslrootcert `{}`", path.display())
                }
                _ => "a CA in the system's trust store".into(),
            },
            provider: provider.clone(),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("set up TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let tls = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        format!(
                            "read sslcert `{}`: {e}; give the client certificate as a PEM file",
                            cert.display()
                        )
                    })?;
                if chain.is_empty() {
                    return Err(format!("sslcert `{}` holds no PEM certificate; give the client certificate as a PEM file", cert.display()));
                }
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    format!("read sslkey `{}`: {e}; give the client certificate's private key as an unencrypted PEM file (PKCS#8, PKCS#1 or SEC1)", key.display())
                })?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    format!(
                        "use sslcert `{}` with sslkey `{}`: {e}; the key must be the certificate's",
                        cert.display(),
                        key.display()
                    )
                })?
            }
        };
        config.ssl_mode(match mode {
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        Ok(Target {
            config,
            tls: Some(MakeRustlsConnect::new(tls)),
        })
    }

    /// A new connection.
    pub(crate) fn connect(&self) -> Result<Client, postgres::Error> {
        match &self.tls {
            None => self.config.connect(NoTls),
            Some(tls) => self.config.connect(tls.clone()),
        }
    }
}

/// The chain verifier over the CAs in `root_cert` (a PEM file), or the system's trust store
/// where it is `None` or `system`.
fn webpki(
    root_cert: Option<&Path>,
    provider: &Arc<CryptoProvider>,
    mode: SslMode,
    why: &str,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) if path != Path::new("system") => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("read sslrootcert `{}`: {e}; set sslrootcert to a PEM file of the CA certificates that sign the server's certificate", path.display()))?;
            let (_, unusable) = roots.add_parsable_certificates(certs);
            if roots.is_empty() {
                return Err(format!(
                    "sslrootcert `{}` holds no usable CA certificate ({unusable} unusable); set sslrootcert to a PEM file of the CA certificates that sign the server's certificate",
                    path.display()
                ));
            }
        }
        _ => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(format!(
                    "sslmode={mode}{why} checks the server's certificate, but no sslrootcert is given and the system's trust store holds no CA certificate; set sslrootcert to the CA that signed the server's certificate (or sslmode=disable to connect without TLS, not recommended off loopback)"
                ));
            }
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("set up the certificate check: {e}"))
}

/// The server-certificate check of one store (see the module's comment).
#[derive(Debug)]
struct Verifier {
    /// The chain check (and, under `verify-full`, the name check); `None`: no check.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    /// Whether the certificate must name the host connected to (`verify-full`).
    check_name: bool,
    /// Which CAs are trusted, for the errors ("the CA in sslrootcert `ca.pem`").
    roots: String,
    /// For the handshake's signatures.
    provider: Arc<CryptoProvider>,
}

/// A refusal of the server's certificate, its text ours.
#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        let cause = match webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(TlsError::InvalidCertificate(cause)) => cause,
            Err(other) => return Err(other),
        };
        let host = server_name.to_str();
        let text = match cause {
            // webpki checks the name only once the chain is trusted.
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
                if !self.check_name =>
            {
                return Ok(ServerCertVerified::assertion())
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "certificate verify failed: the server's certificate does not name the host `{host}` ({cause}); connect by a host name the certificate carries, or set sslmode=verify-ca to check only that a trusted CA signed it"
            ),
            CertificateError::UnknownIssuer => format!(
                "certificate verify failed: unknown CA: the server's certificate is not signed by {}; set sslrootcert to the CA certificate (PEM) that signed the server's certificate",
                self.roots
            ),
            other => format!("certificate verify failed: {other}"),
        };
        // `Other`, not `InvalidCertificate(Other)`: the latter shows its text as `Debug`.
        Err(TlsError::Other(OtherError(Arc::new(Refused(text)))))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What to set when a connection failed for a reason of TLS (the text of a client error
/// with its causes), if it did.
pub(super) fn hint(error: &str) -> Option<&'static str> {
    if error.contains("server does not support TLS") {
        Some("the server does not accept TLS, and sslmode (given, or verify-full by default for a host that is not loopback) demands it: turn on `ssl` in the server's postgresql.conf, or set sslmode=disable to connect without TLS (not recommended off loopback)")
    } else if error.contains("requires a valid client certificate") {
        Some("the server's pg_hba.conf asks for a client certificate: set sslcert and sslkey to a certificate (and its key) signed by a CA the server trusts, whose common name is the user")
    } else if error.contains("no pg_hba.conf entry") && error.contains("no encryption") {
        Some("the server takes connections from here over TLS only: set sslmode=verify-full (with sslrootcert) or require")
    } else {
        None
    }
}
