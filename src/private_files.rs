//! Files that hold secrets or private keys: created owner-only, refused when
//! anyone else could read or swap them. The embedded issuer's files, and the
//! Check listener's TLS key (`listen.tls.key_file`), which the lean build has too.
//!
//! What must hold:
//! - a file is created with mode 0600 in the `open` call itself (never
//!   created, then chmod-ed: a reader could open it in between), and a folder
//!   we create is 0700;
//! - an existing secret file must be a regular file (not a symbolic link,
//!   which would let whoever can write the folder point it elsewhere), owned
//!   by the user we run as, with no group or other permission bits; when it is
//!   not, we refuse and say the command that fixes it;
//! - the folder holding the issuer database must be writable by no one but
//!   its owner (us, or root), sticky bit or not, or a group member or any
//!   user could plant the database's `-wal`/`-shm` files before SQLite opens
//!   them;
//! - a configuration file that holds the project secret must be neither
//!   readable nor writable by others. Group access is allowed there: a
//!   non-root container reads a Kubernetes Secret through `fsGroup`, so it is
//!   legitimately group-readable (mode 0440), and it is often owned by root.
//!
//! One file (about 380 lines of code, the rest its unit tests): every rule above is one check on
//! one opened file, and they must be read together to see that none is skipped.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Mode of files we create.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of folders we create.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Permission bits that must be clear on an existing private file or folder.
const GROUP_OTHER_BITS: u32 = 0o077;
/// Write bits that must be clear on the database's folder.
const GROUP_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;
/// Bits that must be clear on a config file holding the project secret.
const OTHER_READ_WRITE: u32 = 0o006;

#[derive(Debug, Error)]
pub enum PrivateFileError {
    #[error(
        "{} holds {what} and can be read or written by group or others (mode {mode:03o}); \
         refusing to use it. Fix: `{fix}`",
        path.display()
    )]
    TooOpen {
        path: PathBuf,
        what: &'static str,
        mode: u32,
        fix: String,
    },
    #[error(
        "{} holds {what} but belongs to uid {owner}, not to uid {me} that this process runs as; \
         refusing to use it. Run this as uid {owner}; only if the file really is this user's: \
         `{fix}`",
        path.display()
    )]
    ForeignOwner {
        path: PathBuf,
        what: &'static str,
        owner: u32,
        me: u32,
        fix: String,
    },
    #[error(
        "{} holds {what} and is a symbolic link; refusing to follow it. Point the config at the \
         real file",
        path.display()
    )]
    Symlink { path: PathBuf, what: &'static str },
    #[error("{} should hold {what} but is not a regular file", path.display())]
    NotAFile { path: PathBuf, what: &'static str },
    #[error(
        "{} holds {what} and {who} can write to it (mode {mode:03o}), so they could plant or \
         swap its files; refusing to use it. Move it to a folder only this user can write{}",
        path.display(),
        fix.as_deref().map(|f| format!(", or `{f}`")).unwrap_or_default()
    )]
    SharedFolder {
        path: PathBuf,
        what: &'static str,
        who: &'static str,
        mode: u32,
        /// None for a sticky folder (such as /tmp): it is shared on purpose.
        fix: Option<String>,
    },
    #[error(
        "{} holds {what} but belongs to uid {owner}, who could plant or swap its files; refusing \
         to use it. Move it to a folder this user (uid {me}) owns",
        path.display()
    )]
    ForeignFolder {
        path: PathBuf,
        what: &'static str,
        owner: u32,
        me: u32,
    },
    #[error(
        "{} holds {what} and other users can {access} it (mode {mode:03o}); refusing to use it. \
         Fix: `{fix}` (group read, as a Kubernetes Secret with defaultMode 0440 and fsGroup \
         gives, is fine), or take the secret out of the file and set {env}",
        path.display()
    )]
    ExposedConfig {
        path: PathBuf,
        what: &'static str,
        access: &'static str,
        mode: u32,
        fix: String,
        env: &'static str,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PrivateFileError {
    let path = path.to_owned();
    move |source| PrivateFileError::Io {
        action,
        path,
        source,
    }
}

/// `path` as one shell word, for the fix commands we print.
pub fn shell_quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(unix)]
fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Checks an existing private file; `Ok(None)` when there is none.
pub fn check_file(path: &Path, what: &'static str) -> Result<Option<Metadata>, PrivateFileError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    if meta.file_type().is_symlink() {
        return Err(PrivateFileError::Symlink {
            path: path.to_owned(),
            what,
        });
    }
    if !meta.is_file() {
        return Err(PrivateFileError::NotAFile {
            path: path.to_owned(),
            what,
        });
    }
    check_owner_and_mode(path, what, &meta, "chmod 600")?;
    Ok(Some(meta))
}

/// Checks an existing folder that must be owner-only; `fix` is the chmod
/// command (without the path) to suggest.
pub fn check_private_dir(
    path: &Path,
    what: &'static str,
    fix: &str,
) -> Result<(), PrivateFileError> {
    let meta = std::fs::symlink_metadata(path).map_err(io_err("inspect", path))?;
    if meta.file_type().is_symlink() {
        // A symlinked state folder is the user's choice; judge what it points to.
        let target = std::fs::metadata(path).map_err(io_err("inspect", path))?;
        return check_owner_and_mode(path, what, &target, fix);
    }
    check_owner_and_mode(path, what, &meta, fix)
}

#[cfg(unix)]
fn check_owner_and_mode(
    path: &Path,
    what: &'static str,
    meta: &Metadata,
    chmod: &str,
) -> Result<(), PrivateFileError> {
    use std::os::unix::fs::MetadataExt as _;
    let me = current_uid();
    if meta.uid() != me {
        return Err(PrivateFileError::ForeignOwner {
            path: path.to_owned(),
            what,
            owner: meta.uid(),
            me,
            fix: format!("chown {me} {}", shell_quote(path)),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(PrivateFileError::TooOpen {
            path: path.to_owned(),
            what,
            mode,
            fix: format!("{chmod} {}", shell_quote(path)),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_and_mode(
    _path: &Path,
    _what: &'static str,
    _meta: &Metadata,
    _chmod: &str,
) -> Result<(), PrivateFileError> {
    Ok(())
}

/// Creates `dir` and any missing parents with mode 0700. Folders that exist
/// already are left as they are.
pub fn create_dir_all(dir: &Path) -> Result<(), PrivateFileError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(PRIVATE_DIR_MODE);
    }
    builder.create(dir).map_err(io_err("create folder", dir))
}

/// Refuses a folder that anyone but its owner can write (sticky or not: a
/// sticky folder still lets others create the names SQLite is about to open),
/// or whose owner is neither us nor root.
pub fn check_folder_not_shared(dir: &Path, what: &'static str) -> Result<(), PrivateFileError> {
    let meta = std::fs::metadata(dir).map_err(io_err("inspect", dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let mode = meta.mode() & 0o7777;
        if mode & GROUP_OTHER_WRITE != 0 {
            return Err(PrivateFileError::SharedFolder {
                path: dir.to_owned(),
                what,
                who: if mode & 0o002 != 0 {
                    "any user"
                } else {
                    "its group"
                },
                mode,
                fix: (mode & STICKY == 0).then(|| format!("chmod g-w,o-w {}", shell_quote(dir))),
            });
        }
        let me = current_uid();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(PrivateFileError::ForeignFolder {
                path: dir.to_owned(),
                what,
                owner: meta.uid(),
                me,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (meta, what, GROUP_OTHER_WRITE, STICKY);
    Ok(())
}

/// Reads a configuration file, returning its text and the metadata of the
/// very file that was read (taken from the open descriptor, so a file swapped
/// in between cannot be judged in place of the one we read). Symbolic links
/// are followed: Kubernetes mounts Secret and ConfigMap files as links.
pub fn read_config(path: &Path) -> io::Result<(String, Metadata)> {
    use std::io::Read as _;
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok((text, meta))
}

/// Refuses a configuration file (described by `meta`, from [`read_config`])
/// that holds `what` when other users can read or write it; `env` names the
/// variable that can carry the secret instead.
pub fn check_secret_config(
    path: &Path,
    meta: &Metadata,
    what: &'static str,
    env: &'static str,
) -> Result<(), PrivateFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let mode = meta.mode() & 0o7777;
        if mode & OTHER_READ_WRITE != 0 {
            return Err(PrivateFileError::ExposedConfig {
                path: path.to_owned(),
                what,
                access: match (mode & 0o004 != 0, mode & 0o002 != 0) {
                    (true, true) => "read and write",
                    (true, false) => "read",
                    _ => "write",
                },
                mode,
                fix: format!("chmod o-rw {}", shell_quote(path)),
                env,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (path, meta, what, env, OTHER_READ_WRITE);
    Ok(())
}

/// Creates `path` with mode 0600 if it does not exist (race-free: the mode is
/// set by the `open` that creates it). Returns whether it was created.
pub fn create_new(path: &Path, what: &'static str) -> Result<bool, PrivateFileError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(PRIVATE_FILE_MODE);
    }
    match options.open(path) {
        Ok(_) => Ok(true),
        // Another process (or an earlier run) made it: judge it as found.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            check_file(path, what)?;
            Ok(false)
        }
        Err(e) => Err(io_err("create", path)(e)),
    }
}

/// Opens `path` for writing from the start, creating it 0600. An existing
/// file must pass [`check_file`] first; one whose mode merely lost the
/// owner-only bits inside an owner-only folder is tightened through the open
/// descriptor, which is race-free.
pub fn create_truncate(path: &Path, what: &'static str) -> Result<File, PrivateFileError> {
    if let Err(err) = check_file(path, what)
        && !matches!(err, PrivateFileError::TooOpen { .. })
    {
        return Err(err);
    }
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(PRIVATE_FILE_MODE);
    }
    let file = options.open(path).map_err(io_err("write", path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file
            .metadata()
            .map_err(io_err("inspect", path))?
            .permissions()
            .mode();
        if mode & GROUP_OTHER_BITS != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))
                .map_err(io_err("restrict", path))?;
        }
    }
    Ok(file)
}

#[cfg(all(test, unix, feature = "issuer"))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::issuer::store::tests::TempDb;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn created_files_and_folders_are_owner_only() {
        let tmp = TempDb::new();
        let dir = tmp.dir.join("a/b");
        create_dir_all(&dir).unwrap();
        assert_eq!(mode(&tmp.dir.join("a")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("f");
        assert!(create_new(&file, "a test secret").unwrap());
        assert_eq!(mode(&file), 0o600);
        assert!(!create_new(&file, "a test secret").unwrap());
        let other = dir.join("g");
        drop(create_truncate(&other, "a test secret").unwrap());
        assert_eq!(mode(&other), 0o600);
    }

    #[test]
    fn too_open_files_are_refused_with_the_fix() {
        let tmp = TempDb::new();
        let file = tmp.dir.join("it's secret");
        std::fs::write(&file, "x").unwrap();
        for bad in [0o640, 0o604, 0o620, 0o602, 0o644] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(bad)).unwrap();
            let err = check_file(&file, "a test secret").unwrap_err();
            let PrivateFileError::TooOpen { fix, mode, .. } = &err else {
                panic!("{bad:o}: {err}");
            };
            assert_eq!(*mode, bad);
            assert_eq!(
                fix,
                &format!("chmod 600 '{}'", file.display()).replace("it's", r"it'\''s")
            );
            assert!(err.to_string().contains(fix.as_str()), "{err}");
            // create_new judges an existing file the same way.
            assert!(create_new(&file, "a test secret").is_err());
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_file(&file, "a test secret").unwrap().is_some());
        assert!(check_file(&tmp.dir.join("none"), "x").unwrap().is_none());
        // A too-open file we are about to rewrite is tightened on the descriptor.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_truncate(&file, "a test secret").unwrap());
        assert_eq!(mode(&file), 0o600);
    }

    /// Needs root to give a file away; as any other user there is nothing to hand over.
    #[test]
    fn files_of_another_user_are_refused() {
        if current_uid() != 0 {
            return;
        }
        let tmp = TempDb::new();
        let file = tmp.dir.join("theirs");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
        let err = check_file(&file, "a test secret").unwrap_err();
        assert!(
            matches!(
                err,
                PrivateFileError::ForeignOwner {
                    owner: 65534,
                    me: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("uid 65534"), "{err}");
        assert!(create_truncate(&file, "a test secret").is_err());
    }

    #[test]
    fn symlinks_folders_and_shared_folders_are_refused() {
        let tmp = TempDb::new();
        let target = tmp.dir.join("target");
        std::fs::write(&target, "x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = tmp.dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            check_file(&link, "x"),
            Err(PrivateFileError::Symlink { .. })
        ));
        assert!(matches!(
            create_truncate(&link, "x"),
            Err(PrivateFileError::Symlink { .. })
        ));
        assert!(matches!(
            check_file(&tmp.dir, "x"),
            Err(PrivateFileError::NotAFile { .. })
        ));
        let shared = tmp.dir.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = check_private_dir(&shared, "x", "chmod -R go=").unwrap_err();
        assert!(err.to_string().contains("chmod -R go= "), "{err}");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
        check_private_dir(&shared, "x", "chmod -R go=").unwrap();
    }

    /// Group members, not only everyone, could plant `-wal`/`-shm` in a folder they can write;
    /// a sticky bit does not stop them creating names, and is never "fixed" by chmod advice.
    #[test]
    fn database_folders_anyone_but_the_owner_can_write_are_refused() {
        let tmp = TempDb::new();
        let dir = tmp.dir.join("it's db");
        std::fs::create_dir(&dir).unwrap();
        for (bad, who, fix) in [
            (0o775, "its group", true),
            (0o770, "its group", true),
            (0o730, "its group", true),
            (0o2775, "its group", true),
            (0o757, "any user", true),
            (0o777, "any user", true),
            (0o1777, "any user", false),
            (0o1770, "its group", false),
        ] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(bad)).unwrap();
            let err = check_folder_not_shared(&dir, "x").unwrap_err();
            let PrivateFileError::SharedFolder {
                who: got,
                mode,
                fix: got_fix,
                ..
            } = &err
            else {
                panic!("{bad:o}: {err}");
            };
            assert_eq!((*got, *mode), (who, bad), "{err}");
            let line = err.to_string();
            assert!(!line.contains('\n'), "{line}");
            if fix {
                let want = format!("chmod g-w,o-w {}", shell_quote(&dir));
                assert_eq!(got_fix.as_deref(), Some(want.as_str()));
                assert!(line.contains(&format!("`{want}`")), "{line}");
            } else {
                assert_eq!(*got_fix, None, "{bad:o}");
                assert!(!line.contains("chmod"), "{line}");
            }
        }
        for good in [0o755, 0o750, 0o700, 0o1755, 0o711] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(good)).unwrap();
            check_folder_not_shared(&dir, "x").unwrap_or_else(|e| panic!("{good:o}: {e}"));
        }
        // Judged through a symbolic link too.
        let link = tmp.dir.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(check_folder_not_shared(&link, "x").is_err());
    }

    /// Needs root to give a folder away.
    #[test]
    fn database_folders_of_another_user_are_refused() {
        if current_uid() != 0 {
            return;
        }
        let tmp = TempDb::new();
        let dir = tmp.dir.join("theirs");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let err = check_folder_not_shared(&dir, "x").unwrap_err();
        assert!(
            matches!(err, PrivateFileError::ForeignFolder { owner: 65534, .. }),
            "{err}"
        );
        // Root's folders are trusted: root can write anywhere anyway.
        std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
        check_folder_not_shared(&dir, "x").unwrap();
    }

    #[test]
    fn secret_configs_others_can_read_or_write_are_refused_group_access_is_not() {
        let tmp = TempDb::new();
        let file = tmp.dir.join("issuer config.yaml");
        std::fs::write(&file, "project_secret: x\n").unwrap();
        let judge = |mode: u32| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let (text, meta) = read_config(&file).unwrap();
            assert_eq!(text, "project_secret: x\n");
            check_secret_config(&file, &meta, "the secret", "SECRET_ENV")
        };
        for (bad, access) in [
            (0o644, "read"),
            (0o604, "read"),
            (0o444, "read"),
            (0o602, "write"),
            (0o622, "write"),
            (0o606, "read and write"),
            (0o666, "read and write"),
        ] {
            let err = judge(bad).unwrap_err();
            let PrivateFileError::ExposedConfig {
                access: got,
                mode,
                fix,
                ..
            } = &err
            else {
                panic!("{bad:o}: {err}");
            };
            assert_eq!((*got, *mode), (access, bad));
            assert_eq!(fix, &format!("chmod o-rw '{}'", file.display()));
            let line = err.to_string();
            assert!(line.contains(&format!("`{fix}`")), "{line}");
            assert!(line.contains("SECRET_ENV"), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
        // Owner and group, as a Kubernetes Secret mounted with fsGroup, are fine.
        for good in [0o600, 0o400, 0o640, 0o440, 0o660, 0o641] {
            judge(good).unwrap_or_else(|e| panic!("{good:o}: {e}"));
        }
        // The file read is the file judged, through a link (Kubernetes mounts files as links).
        let link = tmp.dir.join("link.yaml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_, meta) = read_config(&link).unwrap();
        assert!(check_secret_config(&link, &meta, "the secret", "SECRET_ENV").is_err());
    }

    #[test]
    fn shell_quote_keeps_plain_paths_and_quotes_the_rest() {
        assert_eq!(shell_quote(Path::new("/var/lib/x.db")), "/var/lib/x.db");
        assert_eq!(shell_quote(Path::new("a b")), "'a b'");
        assert_eq!(shell_quote(Path::new("it's")), r"'it'\''s'");
        assert_eq!(shell_quote(Path::new("$(rm)")), "'$(rm)'");
    }
}
