//! Files that hold secrets or private keys: created owner-only, refused when
//! anyone else could read or swap them.
//!
//! What must hold:
//! - a file is created with mode 0600 in the `open` call itself (never
//!   created, then chmod-ed: a reader could open it in between), and a folder
//!   we create is 0700;
//! - an existing secret file must be a regular file (not a symbolic link,
//!   which would let whoever can write the folder point it elsewhere), owned
//!   by the user we run as, with no group or other permission bits; when it is
//!   not, we refuse and say the command that fixes it;
//! - the folder holding the issuer database must not be writable by every
//!   user, or anyone could plant the database's `-wal`/`-shm` files before
//!   SQLite opens them.
//!
//! Configuration files mounted from a Kubernetes Secret are not checked here:
//! a non-root container reads them through `fsGroup`, so they are legitimately
//! group-readable (mode 0440).

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
const OTHER_WRITE: u32 = 0o002;

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
        "{} holds {what} and any user can write to it, so anyone could plant or swap its files; \
         move it to a folder only this user can write, or `{fix}`",
        path.display()
    )]
    SharedFolder {
        path: PathBuf,
        what: &'static str,
        fix: String,
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

/// Refuses a folder that every user can write (sticky or not).
pub fn check_not_world_writable(dir: &Path, what: &'static str) -> Result<(), PrivateFileError> {
    let meta = std::fs::metadata(dir).map_err(io_err("inspect", dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & OTHER_WRITE != 0 {
            return Err(PrivateFileError::SharedFolder {
                path: dir.to_owned(),
                what,
                fix: format!("chmod o-w {}", shell_quote(dir)),
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (meta, what, OTHER_WRITE);
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

#[cfg(all(test, unix))]
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
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(matches!(
            check_not_world_writable(&shared, "x"),
            Err(PrivateFileError::SharedFolder { .. })
        ));
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_not_world_writable(&shared, "x").unwrap();
        let err = check_private_dir(&shared, "x", "chmod -R go=").unwrap_err();
        assert!(err.to_string().contains("chmod -R go= "), "{err}");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
        check_private_dir(&shared, "x", "chmod -R go=").unwrap();
    }

    #[test]
    fn shell_quote_keeps_plain_paths_and_quotes_the_rest() {
        assert_eq!(shell_quote(Path::new("/var/lib/x.db")), "/var/lib/x.db");
        assert_eq!(shell_quote(Path::new("a b")), "'a b'");
        assert_eq!(shell_quote(Path::new("it's")), r"'it'\''s'");
        assert_eq!(shell_quote(Path::new("$(rm)")), "'$(rm)'");
    }
}
