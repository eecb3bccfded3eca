//! Key material at rest (issue 13), with the real binary on real files: the issuer's database
//! and its `-wal`/`-shm` are created owner-only, a database group or others can read is refused
//! with the command that fixes it, a copied database does not give up its signing key without
//! the project secret, and a database written by the previous version (plaintext keys) is
//! sealed on open without losing its keys. A config file holding the project secret that other
//! users can read or write, and a database folder its group or others can write, are refused.
#![cfg(feature = "issuer")]

mod common;

use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Output;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::issuer::{
    IssuerProcess, PROJECT_SECRET, cli_output, cli_output_env, write_config,
    write_embedded_sidecar_config, write_private,
};
use common::process::{TempDir, free_addr};
use serde_json::Value;

const OTHER_SECRET: &str = "a-different-project-secret-0123456789";

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn companion(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// What someone copying the database would get: the file and its WAL.
fn raw_bytes(db: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(db).unwrap();
    if let Ok(wal) = std::fs::read(companion(db, "-wal")) {
        bytes.extend(wal);
    }
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A failed command: non-zero exit and a one-line error on stderr, which is returned.
fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "unexpectedly succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
    stderr
}

async fn jwks(issuer: &IssuerProcess) -> Value {
    common::http_client()
        .get(issuer.jwks_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn token(issuer: &IssuerProcess, id: &str, secret: &str) -> String {
    let (status, body) = issuer.token_response(id, secret).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

/// The modulus of every key in the JWKS, as raw bytes.
fn moduli(jwks: &Value) -> Vec<Vec<u8>> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| URL_SAFE_NO_PAD.decode(k["n"].as_str().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_real_run_creates_owner_only_files_and_folders() {
    let dir = TempDir::new("issuer-at-rest");
    let addr = free_addr();
    // A folder the issuer has to create, below the config's folder.
    write_config(dir.path(), addr, "state/keys/issuer.db", PROJECT_SECRET);
    let issuer = IssuerProcess::start_in(dir, addr).await;
    let (id, secret) = issuer.create_client("user-at-rest", "read:orders");
    token(&issuer, &id, &secret).await;

    let db = issuer.dir.join("state/keys/issuer.db");
    assert_eq!(mode(&issuer.dir.join("state")), 0o700);
    assert_eq!(mode(&issuer.dir.join("state/keys")), 0o700);
    // The server holds the database open, so SQLite's WAL files exist now.
    for file in [db.clone(), companion(&db, "-wal"), companion(&db, "-shm")] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[tokio::test]
async fn a_readable_database_is_refused_with_the_command_that_fixes_it() {
    let dir = TempDir::new("issuer-at-rest");
    let config = write_config(dir.path(), free_addr(), "issuer.db", PROJECT_SECRET);
    let out = cli_output(&config, &["clients", "list"]);
    assert!(out.status.success(), "{out:?}");
    let db = dir.join("issuer.db");
    assert_eq!(mode(&db), 0o600);

    for bad in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(bad)).unwrap();
        for args in [&["issuer"][..], &["clients", "list"], &["issuer", "keys"]] {
            let err = one_line_error(&cli_output(&config, args));
            assert!(
                err.contains(&format!("chmod 600 {}", db.display())),
                "{args:?} {bad:o}: {err}"
            );
        }
    }
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(cli_output(&config, &["clients", "list"]).status.success());

    // A readable -wal beside it (planted, or left by an old version) is refused the same way.
    let wal = companion(&db, "-wal");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&wal)
        .unwrap();
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = one_line_error(&cli_output(&config, &["issuer"]));
    assert!(
        err.contains(&format!("chmod 600 {}", wal.display())),
        "{err}"
    );
}

#[tokio::test]
async fn a_copied_database_gives_up_no_key_without_the_project_secret() {
    let issuer = IssuerProcess::start().await;
    let (id, secret) = issuer.create_client("user-at-rest", "read:orders");
    let first = token(&issuer, &id, &secret).await;
    issuer.cli(&["issuer", "rotate-key"]);
    let keys = jwks(&issuer).await;
    let published = moduli(&keys);
    assert_eq!(published.len(), 2);

    // The thief's copy, taken while the server runs (WAL and all).
    let db = issuer.dir.join("issuer.db");
    let bytes = raw_bytes(&db);
    for n in &published {
        assert!(
            !contains(&bytes, n),
            "a key's modulus is readable in the database"
        );
        assert!(!contains(&bytes, &n[..32]), "part of a key is readable");
    }
    let copy = TempDir::new("issuer-stolen");
    for suffix in ["", "-wal"] {
        let to = companion(&copy.join("issuer.db"), suffix);
        std::fs::copy(companion(&db, suffix), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let config = write_config(copy.path(), free_addr(), "issuer.db", OTHER_SECRET);
    for args in [
        &["issuer", "keys"][..],
        &["issuer"],
        &["issuer", "rotate-key"],
    ] {
        let err = one_line_error(&cli_output(&config, args));
        assert!(err.contains("project_secret"), "{args:?}: {err}");
        assert!(err.contains("different project secret"), "{args:?}: {err}");
        assert!(
            !err.contains(OTHER_SECRET) && !err.contains(PROJECT_SECRET),
            "{err}"
        );
    }

    // The owner, with the right secret, still has both keys.
    let listed = issuer.cli(&["issuer", "keys"]);
    assert!(listed.contains(&kid_of(&first)), "{listed}");
    assert_eq!(jwks(&issuer).await["keys"], keys["keys"]);
}

#[tokio::test]
async fn plaintext_keys_of_an_older_version_are_sealed_on_open_and_keep_working() {
    let dir = TempDir::new("issuer-at-rest");
    let db = dir.join("issuer.db");
    // A database as schema version 1 wrote it: owner-only, private keys in clear.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&db)
        .unwrap();
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let der = pair.as_der().unwrap().as_ref().to_vec();
    let modulus = pair
        .public_key()
        .modulus()
        .big_endian_without_leading_zero()
        .to_vec();
    let kid = "jwk-test-00000000-0000-4000-8000-000000000001";
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(include_str!("../src/issuer/migrations/0001_initial.sql"))
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO signing_keys (kid, private_key_pkcs8, state, created_at) \
             VALUES (?1, ?2, 'active', 1700000000)",
            rusqlite::params![kid, der],
        )
        .unwrap();
    }
    assert!(contains(&raw_bytes(&db), &der));

    let addr = free_addr();
    write_config(dir.path(), addr, "issuer.db", PROJECT_SECRET);
    let issuer = IssuerProcess::start_in(dir, addr).await;
    // The same key signs and is published.
    let keys = jwks(&issuer).await;
    assert_eq!(keys["keys"][0]["kid"], kid);
    assert_eq!(moduli(&keys), vec![modulus.clone()]);
    let (id, secret) = issuer.create_client("user-migrated", "read:orders");
    assert_eq!(kid_of(&token(&issuer, &id, &secret).await), kid);

    let bytes = raw_bytes(&issuer.dir.join("issuer.db"));
    assert!(
        !contains(&bytes, &der),
        "the plaintext key survived the migration"
    );
    assert!(!contains(&bytes, &der[der.len() - 64..]));
    assert!(!contains(&bytes, &modulus[..32]));
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The commands that read the issuer's config, and the sidecar's with `provider.kind: embedded`.
const ISSUER_COMMANDS: [&[&str]; 3] = [&["issuer"], &["clients", "list"], &["issuer", "keys"]];
const SIDECAR_COMMANDS: [&[&str]; 2] = [&["check-config"], &["serve"]];

/// The project secret gives the whole management API and unseals the signing keys: a config file
/// holding it that other users can read or write is refused by every command that reads it,
/// naming the file and the chmod that fixes it. Group access stays allowed (a Kubernetes Secret
/// mounted with `defaultMode: 0440` and `fsGroup`).
#[test]
fn a_config_others_can_read_or_write_is_refused_when_it_holds_the_project_secret() {
    let dir = TempDir::new("issuer-config-mode");
    let issuer = write_config(dir.path(), free_addr(), "issuer.db", PROJECT_SECRET);
    let sidecar = write_embedded_sidecar_config(dir.path(), "issuer.db", Some(PROJECT_SECRET));
    // As written (0600), both are accepted; this also creates the database.
    assert!(cli_output(&issuer, &["clients", "list"]).status.success());
    assert!(cli_output(&sidecar, &["check-config"]).status.success());

    for bad in [0o644, 0o604, 0o602, 0o666, 0o647] {
        for (config, commands, field) in [
            (&issuer, &ISSUER_COMMANDS[..], None),
            (
                &sidecar,
                &SIDECAR_COMMANDS[..],
                Some("provider.embedded.project_secret"),
            ),
        ] {
            set_mode(config, bad);
            for args in commands {
                let err = one_line_error(&cli_output_env(config, args, None));
                let fix = format!("`chmod o-rw {}`", config.display());
                assert!(err.contains(&fix), "{args:?} {bad:o}: {err}");
                assert!(err.contains("M2M_ISSUER_PROJECT_SECRET"), "{err}");
                if let Some(field) = field {
                    assert!(err.starts_with(&format!("error: {field}: ")), "{err}");
                }
                assert!(!err.contains(PROJECT_SECRET), "{err}");
            }
        }
    }
    for good in [0o600, 0o400, 0o640, 0o440, 0o660] {
        set_mode(&issuer, good);
        let out = cli_output(&issuer, &["clients", "list"]);
        assert!(out.status.success(), "{good:o}: {out:?}");
        set_mode(&sidecar, good);
        let out = cli_output(&sidecar, &["check-config"]);
        assert!(out.status.success(), "{good:o}: {out:?}");
    }
}

/// What counts is the secret in effect: a file whose `project_secret` the variable replaces
/// (a committed placeholder) or that has none exposes nothing; a file holding the same value as
/// the variable still does.
#[test]
fn a_readable_config_is_judged_by_the_secret_in_effect() {
    let dir = TempDir::new("issuer-config-env");
    let placeholder = "change-me-to-a-long-random-project-secret";
    let issuer = write_config(dir.path(), free_addr(), "issuer.db", placeholder);
    let sidecar = write_embedded_sidecar_config(dir.path(), "issuer.db", Some(placeholder));
    set_mode(&issuer, 0o644);
    set_mode(&sidecar, 0o644);
    // Replaced by a different secret from the environment: accepted.
    let out = cli_output_env(&issuer, &["clients", "list"], Some(PROJECT_SECRET));
    assert!(out.status.success(), "{out:?}");
    let out = cli_output_env(&sidecar, &["check-config"], Some(PROJECT_SECRET));
    assert!(out.status.success(), "{out:?}");
    // The same value in the file and in the environment: the file still gives it away.
    let err = one_line_error(&cli_output_env(
        &issuer,
        &["clients", "list"],
        Some(placeholder),
    ));
    assert!(err.contains("chmod o-rw"), "{err}");
    let err = one_line_error(&cli_output_env(
        &sidecar,
        &["check-config"],
        Some(placeholder),
    ));
    assert!(err.contains("chmod o-rw"), "{err}");

    // No secret in the file at all.
    let addr = free_addr();
    write_private(
        &issuer,
        &format!("listen: {addr}\ndatabase: issuer.db\nproject_id: project-test-stack\n"),
    );
    let sidecar = write_embedded_sidecar_config(dir.path(), "issuer.db", None);
    set_mode(&issuer, 0o644);
    set_mode(&sidecar, 0o644);
    let out = cli_output_env(&issuer, &["clients", "list"], Some(PROJECT_SECRET));
    assert!(out.status.success(), "{out:?}");
    let out = cli_output_env(&sidecar, &["check-config"], Some(PROJECT_SECRET));
    assert!(out.status.success(), "{out:?}");
    // Without the variable it is missing, which is said as such.
    let err = one_line_error(&cli_output_env(&issuer, &["clients", "list"], None));
    assert!(
        err.contains("project_secret") && err.contains("required"),
        "{err}"
    );
}

/// Group members, not only every user, could plant `-wal`/`-shm` in a database folder they can
/// write before SQLite opens them: such a folder is refused by the issuer, the CLI and the
/// sidecar's embedded issuer, with the chmod that fixes it, except for a sticky folder (such as
/// /tmp), which is shared on purpose and must be left.
#[test]
fn a_database_folder_its_group_or_others_can_write_is_refused() {
    let dir = TempDir::new("issuer-db-folder");
    let issuer = write_config(dir.path(), free_addr(), "db/issuer.db", PROJECT_SECRET);
    let sidecar = write_embedded_sidecar_config(dir.path(), "db/issuer.db", Some(PROJECT_SECRET));
    assert!(cli_output(&issuer, &["clients", "list"]).status.success());
    let folder = dir.join("db");
    assert_eq!(mode(&folder), 0o700);

    for (bad, fixable) in [
        (0o775, true),
        (0o770, true),
        (0o2775, true),
        (0o757, true),
        (0o777, true),
        (0o1777, false),
        (0o1775, false),
    ] {
        set_mode(&folder, bad);
        for args in ISSUER_COMMANDS {
            let err = one_line_error(&cli_output(&issuer, args));
            assert!(err.contains(&folder.display().to_string()), "{err}");
            assert!(err.contains("folder only this user can write"), "{err}");
            let fix = format!("`chmod g-w,o-w {}`", folder.display());
            assert_eq!(err.contains(&fix), fixable, "{args:?} {bad:o}: {err}");
            assert!(fixable || !err.contains("chmod"), "{err}");
        }
        let out = cli_output_env(&sidecar, &["serve"], None);
        assert!(!out.status.success(), "{bad:o}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("folder only this user can write"),
            "{stderr}"
        );
    }
    for good in [0o755, 0o750, 0o700, 0o1755] {
        set_mode(&folder, good);
        let out = cli_output(&issuer, &["clients", "list"]);
        assert!(out.status.success(), "{good:o}: {out:?}");
    }
}

/// A sidecar config whose embedded issuer holds the management key secret (the project secret
/// coming from the environment) is refused when others can read it, naming that field.
#[test]
fn an_exposed_management_key_in_a_sidecar_config_is_named() {
    let dir = TempDir::new("issuer-config-mode");
    let sidecar = write_embedded_sidecar_config(dir.path(), "issuer.db", None);
    let text = std::fs::read_to_string(&sidecar).unwrap();
    let key = "management-key-secret-0123456789";
    std::fs::write(
        &sidecar,
        format!("{text}    management:\n      key_secret: {key}\n"),
    )
    .unwrap();
    set_mode(&sidecar, 0o600);
    assert!(
        cli_output_env(&sidecar, &["check-config"], Some(PROJECT_SECRET))
            .status
            .success()
    );
    set_mode(&sidecar, 0o644);
    let err = one_line_error(&cli_output_env(
        &sidecar,
        &["check-config"],
        Some(PROJECT_SECRET),
    ));
    assert!(
        err.starts_with("error: provider.embedded.management.key_secret: "),
        "{err}"
    );
    assert!(err.contains("M2M_ISSUER_MANAGEMENT_KEY_SECRET"), "{err}");
    assert!(!err.contains(key), "{err}");
}
