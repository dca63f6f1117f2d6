//! TLS to PostgreSQL (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) against real servers:
//! one cluster with `ssl = on`, a CA, a server certificate for `db.example` and a
//! `pg_hba.conf` that asks the user `certuser` for a client certificate (all made here
//! with rcgen: no `openssl` command), and one cluster with `ssl = off`. Both are this
//! module's own, started on first use and stopped at exit, whatever TOKENCACHE_PG_URL
//! says: these tests must choose whether the server speaks TLS.
//!
//! The server's certificate names `db.example` only. A URL reaches it as
//! `db.example:PORT/db?hostaddr=127.0.0.1` (the name is what the certificate is checked
//! against, the address is where the client connects), and by `127.0.0.1` or `localhost`
//! for a name the certificate does not carry. Which connections really use TLS is read
//! from the server (`pg_stat_ssl`), for the replica's listening connection.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::pg::{self, Cluster};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokencache::{Error, Location, NewToken, SslMode, TokenStore};

/// The host name in the server's certificate.
const NAME: &str = "db.example";
/// The user `pg_hba.conf` asks a client certificate of (the certificate's common name).
const CERT_USER: &str = "certuser";

/// A cluster with `ssl = on`, and the files a client uses with it.
struct TlsServer {
    cluster: Cluster,
    /// The CA that signed the server's and the client's certificates.
    ca: PathBuf,
    /// A CA that signed neither.
    other_ca: PathBuf,
    /// `certuser`'s certificate and key.
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `names` with common name `common_name`, signed by `issuer`: its PEM
/// and its key's (PKCS#8).
fn leaf(issuer: &Issuer<'_, KeyPair>, names: &[&str], common_name: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn tls_server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let ca = ca("tokencache test CA");
        let other = self::ca("some other CA");
        let (server_cert, server_key) = leaf(&ca, &[NAME], NAME);
        let (client_cert, client_key) = leaf(&ca, &[], CERT_USER);
        let mut dir = PathBuf::new();
        // The server's key: owned by postgres (start_with gives it the files), mode 0600,
        // as the server demands.
        let cluster = Cluster::start_with("-c ssl=on -c ssl_ca_file=ca.crt", |data| {
            write(&data.join("server.crt"), &server_cert, 0o644);
            write(&data.join("server.key"), &server_key, 0o600);
            write(&data.join("ca.crt"), &ca.pem(), 0o644);
            write(&data.join("other_ca.crt"), &other.pem(), 0o644);
            write(&data.join("client.crt"), &client_cert, 0o644);
            write(&data.join("client.key"), &client_key, 0o600);
            write(
                &data.join("pg_hba.conf"),
                &format!(
                    "local all all trust\n\
                     hostssl all {CERT_USER} 127.0.0.1/32 cert\n\
                     host all all 127.0.0.1/32 trust\n"
                ),
                0o600,
            );
            dir = data.to_path_buf();
        });
        cluster.stop_at_exit();
        pg::connect(&cluster.url("postgres"))
            .batch_execute(&format!("CREATE ROLE {CERT_USER} LOGIN SUPERUSER"))
            .expect("create the certificate user");
        TlsServer {
            cluster,
            ca: dir.join("ca.crt"),
            other_ca: dir.join("other_ca.crt"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    })
}

/// A cluster with `ssl = off`.
fn plain_server() -> &'static Cluster {
    static SERVER: OnceLock<Cluster> = OnceLock::new();
    SERVER.get_or_init(|| {
        let cluster = Cluster::start_with("-c ssl=off", |_| {});
        cluster.stop_at_exit();
        cluster
    })
}

/// A new empty database on `cluster`: its name.
fn fresh_db(cluster: &Cluster) -> String {
    let url = cluster.fresh_db();
    url.rsplit('/').next().unwrap().to_owned()
}

/// The URL of `db` on `cluster` as `user@host`, with `params`.
fn url(cluster: &Cluster, user: &str, host: &str, db: &str, params: &str) -> String {
    let base = format!("postgres://{user}@{host}:{}/{db}", cluster.port);
    match params {
        "" => base,
        _ => format!("{base}?{params}"),
    }
}

/// The URL of `db` by the certificate's name (`db.example`, connecting to 127.0.0.1).
fn by_name(cluster: &Cluster, db: &str, params: &str) -> String {
    let params = match params {
        "" => "hostaddr=127.0.0.1".to_owned(),
        _ => format!("hostaddr=127.0.0.1&{params}"),
    };
    url(cluster, "postgres", NAME, db, &params)
}

fn open(url: &str) -> Result<TokenStore, Error> {
    TokenStore::builder(url)
        .poll_interval(Duration::from_millis(50))
        .open()
}

/// Opens `url`, which must work, and checks the store serves (a token issued validates).
fn open_ok(url: &str) -> TokenStore {
    let store = open(url).unwrap_or_else(|e| panic!("open {url}: {e}"));
    let issued = store.issue(NewToken::new("over-tls")).unwrap();
    assert!(store.validate(issued.secret()).is_ok());
    store
}

/// Opens `url`, which must be refused; the error's text.
fn refused(url: &str) -> String {
    match open(url) {
        Ok(_) => panic!("{url} was opened; it must be refused"),
        Err(error) => {
            eprintln!("refused, as it must be: {error}");
            error.to_string()
        }
    }
}

/// Whether the replica's listening connection to `db` uses TLS, and the client
/// certificate's subject if it sent one, as the server sees them.
fn listener_tls(cluster: &Cluster, db: &str) -> (bool, Option<String>) {
    let mut admin = pg::connect(&cluster.url("postgres"));
    let mut seen = None;
    pg::within(Duration::from_secs(10), || {
        // A store closed just before may still show for a moment: the newest session.
        seen = admin
            .query(
                "SELECT s.ssl, s.client_dn FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.datname = $1 AND a.application_name = 'tokencache-listener' \
                 ORDER BY a.backend_start DESC LIMIT 1",
                &[&db],
            )
            .unwrap()
            .first()
            .map(|row| (row.get(0), row.get(1)));
        seen.is_some()
    })
    .expect("the replica's listener connects");
    seen.unwrap()
}

#[test]
fn verify_full_connects_over_tls_with_the_ca_that_signed_the_servers_certificate() {
    let server = tls_server();
    let db = fresh_db(&server.cluster);
    let ca = server.ca.display();
    let store = open_ok(&by_name(
        &server.cluster,
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    assert!(listener_tls(&server.cluster, &db).0);
    store.close().unwrap();
}

#[test]
fn verify_full_refuses_a_certificate_from_an_unknown_ca_and_names_sslrootcert() {
    let server = tls_server();
    let db = fresh_db(&server.cluster);
    let other = server.other_ca.display();
    let error = refused(&by_name(
        &server.cluster,
        &db,
        &format!("sslmode=verify-full&sslrootcert={other}"),
    ));
    assert!(error.contains("unknown CA"), "{error}");
    assert!(error.contains("set sslrootcert"), "{error}");
    assert!(error.contains(&other.to_string()), "{error}");
}

#[test]
fn verify_full_refuses_a_certificate_that_does_not_name_the_host() {
    let server = tls_server();
    let db = fresh_db(&server.cluster);
    let ca = server.ca.display();
    let params = format!("sslmode=verify-full&sslrootcert={ca}");
    for host in ["127.0.0.1", "localhost"] {
        let error = refused(&url(&server.cluster, "postgres", host, &db, &params));
        assert!(
            error.contains(&format!("does not name the host `{host}`")),
            "{error}"
        );
        assert!(error.contains("sslmode=verify-ca"), "{error}");
    }
}

#[test]
fn verify_ca_checks_the_chain_but_not_the_host_name() {
    let server = tls_server();
    let db = fresh_db(&server.cluster);
    let (ca, other) = (server.ca.display(), server.other_ca.display());
    let at = |params: &str| url(&server.cluster, "postgres", "127.0.0.1", &db, params);
    let store = open_ok(&at(&format!("sslmode=verify-ca&sslrootcert={ca}")));
    assert!(listener_tls(&server.cluster, &db).0);
    store.close().unwrap();
    let error = refused(&at(&format!("sslmode=verify-ca&sslrootcert={other}")));
    assert!(error.contains("unknown CA"), "{error}");
}

#[test]
fn require_connects_over_tls_without_a_ca() {
    let server = tls_server();
    let db = fresh_db(&server.cluster);
    let store = open_ok(&url(
        &server.cluster,
        "postgres",
        "127.0.0.1",
        &db,
        "sslmode=require",
    ));
    assert!(listener_tls(&server.cluster, &db).0);
    store.close().unwrap();
}

#[test]
fn require_with_sslrootcert_checks_the_chain_as_libpq_does() {
    let server = tls_server();
    let db = fresh_db(&server.cluster);
    let other = server.other_ca.display();
    let error = refused(&url(
        &server.cluster,
        "postgres",
        "127.0.0.1",
        &db,
        &format!("sslmode=require&sslrootcert={other}"),
    ));
    assert!(error.contains("unknown CA"), "{error}");
}

#[test]
fn prefer_uses_tls_where_the_server_offers_it_and_plain_where_not() {
    let server = tls_server();
    let db = fresh_db(&server.cluster);
    let store = open_ok(&url(
        &server.cluster,
        "postgres",
        "127.0.0.1",
        &db,
        "sslmode=prefer",
    ));
    assert!(listener_tls(&server.cluster, &db).0);
    store.close().unwrap();
    let plain = plain_server();
    let db = fresh_db(plain);
    let store = open_ok(&url(plain, "postgres", "127.0.0.1", &db, "sslmode=prefer"));
    assert!(!listener_tls(plain, &db).0);
    store.close().unwrap();
}

#[test]
fn a_server_without_tls_is_refused_under_require_verify_ca_and_verify_full() {
    let plain = plain_server();
    let db = fresh_db(plain);
    let ca = tls_server().ca.display();
    for mode in ["require", "verify-ca", "verify-full"] {
        let error = refused(&url(
            plain,
            "postgres",
            "127.0.0.1",
            &db,
            &format!("sslmode={mode}&sslrootcert={ca}"),
        ));
        assert!(error.contains("does not accept TLS"), "{mode}: {error}");
        assert!(error.contains("set sslmode=disable"), "{mode}: {error}");
    }
}

#[test]
fn a_client_certificate_is_accepted_where_pg_hba_demands_one_and_its_absence_refused() {
    let server = tls_server();
    let db = fresh_db(&server.cluster);
    let at = url(
        &server.cluster,
        CERT_USER,
        NAME,
        &db,
        "hostaddr=127.0.0.1&sslmode=verify-full",
    );
    // The builder's methods, for once, in place of the URL's parameters.
    let store = TokenStore::builder(&at)
        .ssl_root_cert(&server.ca)
        .ssl_client_cert(&server.client_cert, &server.client_key)
        .open()
        .expect("open with a client certificate");
    let issued = store.issue(NewToken::new("client-cert")).unwrap();
    assert!(store.validate(issued.secret()).is_ok());
    let (ssl, subject) = listener_tls(&server.cluster, &db);
    assert!(ssl);
    assert_eq!(subject.as_deref(), Some("/CN=certuser"));
    store.close().unwrap();
    // The same URL's parameters work as well.
    let (cert, key) = (server.client_cert.display(), server.client_key.display());
    let with_files = format!(
        "{at}&sslrootcert={}&sslcert={cert}&sslkey={key}",
        server.ca.display()
    );
    open_ok(&with_files).close().unwrap();
    // Without one, the server refuses, and the error says what to set.
    let error = match TokenStore::builder(&at).ssl_root_cert(&server.ca).open() {
        Ok(_) => panic!("opened without the client certificate pg_hba.conf demands"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("set sslcert and sslkey"), "{error}");
}

#[test]
fn without_sslmode_a_host_that_is_not_loopback_is_verify_full() {
    let server = tls_server();
    let db = fresh_db(&server.cluster);
    // TLS with the certificate checked: it works with the CA...
    let ca = server.ca.display();
    let store = open_ok(&by_name(&server.cluster, &db, &format!("sslrootcert={ca}")));
    assert!(listener_tls(&server.cluster, &db).0);
    store.close().unwrap();
    // ... a certificate no trusted CA signed is refused (the system's trust store does
    // not hold the test CA) ...
    let error = refused(&by_name(&server.cluster, &db, ""));
    assert!(error.contains("sslrootcert"), "{error}");
    // ... and a server without TLS is refused, not spoken to in plain text.
    let plain = plain_server();
    let db = fresh_db(plain);
    let error = refused(&by_name(plain, &db, ""));
    assert!(error.contains("does not accept TLS"), "{error}");
}

#[test]
fn without_sslmode_a_loopback_host_connects_without_tls_as_before() {
    let server = tls_server();
    let db = fresh_db(&server.cluster);
    for host in ["127.0.0.1", "localhost"] {
        let store = open_ok(&url(&server.cluster, "postgres", host, &db, ""));
        assert!(!listener_tls(&server.cluster, &db).0, "{host}");
        store.close().unwrap();
    }
    // A CA given without sslmode is a mistake there, not silently ignored.
    let ca = server.ca.display();
    let error = refused(&url(
        &server.cluster,
        "postgres",
        "127.0.0.1",
        &db,
        &format!("sslrootcert={ca}"),
    ));
    assert!(error.contains("set sslmode=verify-full"), "{error}");
}

#[test]
fn a_tls_url_shows_its_parameters_and_hides_its_password() {
    let server = tls_server();
    let db = fresh_db(&server.cluster);
    let ca = server.ca.display();
    let params = format!("hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}");
    let at = url(&server.cluster, "postgres:s3cret", NAME, &db, &params);
    let store = open_ok(&at);
    let shown = match store.location() {
        Location::Database(url) => url.clone(),
        other => panic!("a database store's location: {other:?}"),
    };
    assert_eq!(shown, at.replace("s3cret", "***"));
    store.close().unwrap();
    let other = server.other_ca.display();
    let error = refused(&at.replace(&ca.to_string(), &other.to_string()));
    assert!(error.contains("sslmode=verify-full"), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
}

#[test]
fn a_tls_mode_given_both_in_the_url_and_on_the_builder_differently_is_refused() {
    let server = tls_server();
    let db = fresh_db(&server.cluster);
    let at = url(
        &server.cluster,
        "postgres",
        "127.0.0.1",
        &db,
        "sslmode=require",
    );
    let error = match TokenStore::builder(&at).ssl_mode(SslMode::Disable).open() {
        Ok(_) => panic!("opened with two different sslmodes"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("sslmode is given both in the URL and on the builder"),
        "{error}"
    );
    // The builder's mode alone works.
    let at = url(&server.cluster, "postgres", "127.0.0.1", &db, "");
    let store = TokenStore::builder(&at)
        .ssl_mode(SslMode::Require)
        .open()
        .unwrap();
    assert!(listener_tls(&server.cluster, &db).0);
    store.close().unwrap();
}

#[cfg(feature = "cli")]
#[test]
fn the_cli_store_option_takes_the_same_tls_urls() {
    use std::process::Command;
    let server = tls_server();
    let db = fresh_db(&server.cluster);
    let ca = server.ca.display();
    let at = by_name(
        &server.cluster,
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let store = open_ok(&at);
    store.close().unwrap();
    let list = |store: &str| {
        Command::new(env!("CARGO_BIN_EXE_tokencache"))
            .args(["--store", store, "list"])
            .env_remove("TOKENCACHE_STORE")
            .output()
            .expect("run tokencache list")
    };
    let output = list(&at);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("over-tls"), "{stdout}");
    // A certificate it cannot check is refused there too, saying what to set.
    let other = server.other_ca.display();
    let output = list(&at.replace(&ca.to_string(), &other.to_string()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("unknown CA") && stderr.contains("sslrootcert"),
        "{stderr}"
    );
}
