//! TLS settings of a PostgreSQL store: libpq's `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey`, read from the URL or set on the [`Builder`], and the rule for the default mode.
//! The connections themselves (rustls) are in `pg::tls`; this part has no dependency, so
//! [`SslMode`] and the builder methods exist with or without the `postgres` feature.
// Without the feature (or under loom) only the public part is used: a URL is refused.
#![cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;
use crate::location::percent_decode;

/// How a PostgreSQL store's connections use TLS: libpq's `sslmode`, from the URL
/// (`?sslmode=verify-full`) or [`Builder::ssl_mode`](crate::Builder::ssl_mode).
///
/// Where neither names one, a URL whose hosts are all loopback (`localhost`, `127.0.0.0/8`,
/// `::1`) or Unix sockets connects without TLS, as tokencache always did, and any other
/// URL uses [`VerifyFull`](SslMode::VerifyFull) (libpq's default, `prefer`, lets a network
/// attacker read and forge every row). See `docs/REPLICAS.md`, section "TLS".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SslMode {
    /// `disable`: no TLS. Anyone on the path reads and changes every row.
    Disable,
    /// `prefer`: TLS if the server offers it, else plain; the certificate is not checked.
    /// Protects against a passive eavesdropper only.
    Prefer,
    /// `require`: TLS or no connection. Without `sslrootcert` the certificate is not
    /// checked (an active attacker can still intercept); with one, its chain is checked as
    /// under [`VerifyCa`](SslMode::VerifyCa) (as libpq does).
    Require,
    /// `verify-ca`: TLS, and the server's certificate must be signed by a CA in
    /// `sslrootcert` (or the system's trust store); its host name is not checked.
    VerifyCa,
    /// `verify-full`: as `verify-ca`, and the certificate must name the host in the URL.
    VerifyFull,
}

impl SslMode {
    /// The parameter's value, as libpq spells it (`verify-full`).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = Error;

    /// libpq's spelling (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`); any
    /// other value (libpq's `allow` included) is refused with [`Error::InvalidSetting`].
    fn from_str(value: &str) -> Result<SslMode, Error> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::InvalidSetting(format!(
                "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
            )))
            }
        })
    }
}

/// The TLS parameters a store was given, from its URL or its builder (each `None` where
/// neither named it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsOptions {
    pub(crate) mode: Option<SslMode>,
    /// `sslrootcert`: a PEM file of CA certificates, or `system` for the system's trust store.
    pub(crate) root_cert: Option<PathBuf>,
    /// `sslcert`: the client's certificate chain (PEM).
    pub(crate) client_cert: Option<PathBuf>,
    /// `sslkey`: the client's private key (PEM: PKCS#8, PKCS#1 or SEC1; not encrypted).
    pub(crate) client_key: Option<PathBuf>,
}

impl TlsOptions {
    /// `url` without its TLS parameters (what the client parses), and those parameters:
    /// the client refuses `sslmode`'s `verify-*` values and does not know the others.
    /// Keys and values are percent-decoded as the client decodes them; a parameter given
    /// twice takes its last value, as with the client.
    pub(crate) fn split_url(url: &str) -> Result<(String, TlsOptions), Error> {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), TlsOptions::default()));
        };
        let mut options = TlsOptions::default();
        let mut kept: Vec<&str> = Vec::new();
        for piece in query.split('&') {
            let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
            let path = || PathBuf::from(percent_decode(value));
            match percent_decode(key).as_str() {
                "sslmode" => options.mode = Some(percent_decode(value).parse()?),
                "sslrootcert" => options.root_cert = Some(path()),
                "sslcert" => options.client_cert = Some(path()),
                "sslkey" => options.client_key = Some(path()),
                _ => kept.push(piece),
            }
        }
        let rest = match kept.is_empty() {
            true => base.to_owned(),
            false => format!("{base}?{}", kept.join("&")),
        };
        Ok((rest, options))
    }

    /// These options with the builder's `defaults` where these name nothing; a parameter
    /// named by both (with different values) is refused, so no setting is silently ignored.
    pub(crate) fn merge(self, defaults: &TlsOptions) -> Result<TlsOptions, Error> {
        fn one<T: Clone + PartialEq>(
            name: &str,
            url: Option<T>,
            builder: &Option<T>,
        ) -> Result<Option<T>, Error> {
            match (url, builder) {
                (Some(u), Some(b)) if &u != b => Err(Error::InvalidSetting(format!(
                    "{name} is given both in the URL and on the builder, with different values; give it once"
                ))),
                (Some(u), _) => Ok(Some(u)),
                (None, b) => Ok(b.clone()),
            }
        }
        Ok(TlsOptions {
            mode: one("sslmode", self.mode, &defaults.mode)?,
            root_cert: one("sslrootcert", self.root_cert, &defaults.root_cert)?,
            client_cert: one("sslcert", self.client_cert, &defaults.client_cert)?,
            client_key: one("sslkey", self.client_key, &defaults.client_key)?,
        })
    }

    /// The mode to use: the one given, else [`default_mode`] for `hosts`.
    pub(crate) fn mode_for<'a>(&self, hosts: impl IntoIterator<Item = Host<'a>>) -> SslMode {
        self.mode.unwrap_or_else(|| default_mode(hosts))
    }
}

/// A host a URL names, as the client parsed it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Host<'a> {
    /// A host name or IP address (TCP).
    Tcp(&'a str),
    /// An address connected to in place of the host's (`hostaddr`).
    Addr(IpAddr),
    /// A Unix socket (its directory).
    Unix,
}

/// The mode where none is given: [`SslMode::Disable`] (no TLS, as before TLS existed) if
/// every host and `hostaddr` is loopback (`localhost`, an address in `127.0.0.0/8`, `::1`)
/// or a Unix socket, where no network lies between client and server; [`SslMode::VerifyFull`] for
/// any other host, since a URL that crosses a network must not be readable or forgeable by
/// whoever is on the way. (A URL with no host at all: `Disable`; the client refuses it.)
pub(crate) fn default_mode<'a>(hosts: impl IntoIterator<Item = Host<'a>>) -> SslMode {
    let remote = hosts.into_iter().any(|host| match host {
        Host::Unix => false,
        Host::Tcp(name) => !is_loopback(name),
        Host::Addr(ip) => !ip.is_loopback(),
    });
    match remote {
        true => SslMode::VerifyFull,
        false => SslMode::Disable,
    }
}

/// Whether `host` names the loopback interface: `localhost` (any case, with or without a
/// trailing dot), an IPv4 address in `127.0.0.0/8` or `::1` (brackets allowed).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::{default_mode, Host, SslMode, TlsOptions};
    use std::path::PathBuf;

    fn tcp(hosts: &[&'static str]) -> SslMode {
        default_mode(hosts.iter().map(|h| Host::Tcp(h)))
    }

    #[test]
    fn without_sslmode_a_loopback_host_or_socket_keeps_plain_and_any_other_host_is_verify_full() {
        for loopback in [
            "localhost",
            "LocalHost.",
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "[::1]",
        ] {
            assert_eq!(tcp(&[loopback]), SslMode::Disable, "{loopback}");
        }
        assert_eq!(default_mode([Host::Unix]), SslMode::Disable);
        assert_eq!(default_mode([]), SslMode::Disable);
        for remote in [
            "db.example",
            "10.0.0.5",
            "192.168.1.2",
            "128.0.0.1",
            "::2",
            "localhost.example",
            "mydb.abc.eu-west-1.rds.amazonaws.com",
        ] {
            assert_eq!(tcp(&[remote]), SslMode::VerifyFull, "{remote}");
        }
        // One remote host among several is enough, and so is a remote `hostaddr`.
        assert_eq!(tcp(&["127.0.0.1", "db.example"]), SslMode::VerifyFull);
        let addr = |ip: &str| Host::Addr(ip.parse().unwrap());
        assert_eq!(
            default_mode([Host::Tcp("localhost"), addr("10.1.2.3")]),
            SslMode::VerifyFull
        );
        assert_eq!(default_mode([addr("10.1.2.3")]), SslMode::VerifyFull);
        assert_eq!(
            default_mode([Host::Tcp("localhost"), addr("127.0.0.1")]),
            SslMode::Disable
        );
        // A mode given wins over the rule.
        let given = TlsOptions {
            mode: Some(SslMode::Require),
            ..TlsOptions::default()
        };
        assert_eq!(given.mode_for([Host::Tcp("127.0.0.1")]), SslMode::Require);
        assert_eq!(
            TlsOptions::default().mode_for([Host::Tcp("db.example")]),
            SslMode::VerifyFull
        );
    }

    #[test]
    fn the_tls_parameters_are_taken_out_of_the_url_and_the_rest_kept() {
        let (rest, options) = TlsOptions::split_url(
            "postgres://u:pw@db.example:5432/t?sslmode=verify-ca&connect_timeout=3&sslrootcert=/etc/ca%20bundle.pem&sslcert=c.pem&ssl%6Bey=k.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:pw@db.example:5432/t?connect_timeout=3");
        assert_eq!(
            options,
            TlsOptions {
                mode: Some(SslMode::VerifyCa),
                root_cert: Some(PathBuf::from("/etc/ca bundle.pem")),
                client_cert: Some(PathBuf::from("c.pem")),
                client_key: Some(PathBuf::from("k.pem")),
            }
        );
        let (rest, options) = TlsOptions::split_url("postgres://h/t?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), options.mode),
            ("postgres://h/t", Some(SslMode::Require))
        );
        let (rest, options) = TlsOptions::split_url("postgres://h/t").unwrap();
        assert_eq!(
            (rest.as_str(), options),
            ("postgres://h/t", TlsOptions::default())
        );
        let error = TlsOptions::split_url("postgres://h/t?sslmode=allow").unwrap_err();
        assert!(
            error.to_string().contains(
                "sslmode `allow` is not one of disable, prefer, require, verify-ca, verify-full"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_tls_setting_given_twice_differently_is_refused() {
        let url = TlsOptions {
            mode: Some(SslMode::Require),
            ..TlsOptions::default()
        };
        let builder = TlsOptions {
            mode: Some(SslMode::VerifyFull),
            root_cert: Some("ca.pem".into()),
            ..TlsOptions::default()
        };
        let error = url.clone().merge(&builder).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("sslmode is given both in the URL and on the builder"),
            "{error}"
        );
        let merged = TlsOptions::default().merge(&builder).unwrap();
        assert_eq!(merged, builder);
        let same = builder.clone().merge(&builder).unwrap();
        assert_eq!(same, builder);
    }

    #[test]
    fn ssl_modes_read_and_print_as_libpq_spells_them() {
        for mode in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(mode.as_str().parse::<SslMode>().unwrap(), mode);
            assert_eq!(mode.to_string(), mode.as_str());
        }
    }
}
