//! Files and folders another local user might have planted or might change under us. A folder is
//! trusted when no one but its owner can change what it holds, all the way up to `/`; files are
//! opened without following symlinks and must be private; temporaries are created exclusively,
//! under names no one can guess.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a folder is not one to trust.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsafe {
    /// It, or a folder above it, belongs to another uid.
    #[error("the folder {} belongs to uid {uid}", path.display())]
    Owner { path: PathBuf, uid: u32 },
    /// Others may write to it, or to a folder above it that is not sticky.
    #[error("the folder {} is writable by others (mode {mode:04o})", path.display())]
    Writable { path: PathBuf, mode: u32 },
    /// It cannot be resolved or inspected, or is no folder.
    #[error("{0}")]
    Unusable(String),
}

/// Checks that only root and `owners` can change what `dir` holds: `dir` belongs to one of them
/// and no one else may write to it, and every folder above it belongs to one of them and is not
/// writable by others unless it is sticky (like `/tmp`, where only an entry's owner may rename or
/// remove it). Returns `dir` with symlinks resolved: use that path from then on, so that a
/// symlink swapped later changes nothing.
pub fn check_folder(dir: &Path, owners: &[u32]) -> Result<PathBuf, Unsafe> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let real = std::fs::canonicalize(dir)
        .map_err(|e| Unsafe::Unusable(format!("cannot resolve {}: {e}", dir.display())))?;
    for (depth, folder) in real.ancestors().enumerate() {
        let meta = std::fs::metadata(folder)
            .map_err(|e| Unsafe::Unusable(format!("cannot inspect {}: {e}", folder.display())))?;
        if !meta.is_dir() {
            return Err(Unsafe::Unusable(format!("{} is not a folder", folder.display())));
        }
        if meta.uid() != 0 && !owners.contains(&meta.uid()) {
            return Err(Unsafe::Owner { path: folder.to_path_buf(), uid: meta.uid() });
        }
        let writable_by_others = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        if writable_by_others && (depth == 0 || !sticky) {
            return Err(Unsafe::Writable { path: folder.to_path_buf(), mode: meta.mode() & 0o7777 });
        }
    }
    Ok(real)
}

/// [`check_folder`] of a file's folder, for the daemon's own files; returns the file's path in
/// the resolved folder.
fn in_safe_folder(path: &Path) -> Result<PathBuf, String> {
    let name = path.file_name().ok_or_else(|| format!("{} names no file", path.display()))?;
    let folder = path.parent().unwrap_or(Path::new("."));
    let folder =
        check_folder(folder, &[crate::paths::euid()]).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(folder.join(name))
}

/// Checks that an existing file is this uid's own, regular and private (no group or other
/// access).
fn check_private(path: &Path, meta: &Metadata) -> Result<(), String> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(format!("{} is a symbolic link; give the file itself", path.display()));
    }
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a folder"
        } else {
            "not a regular file"
        };
        return Err(format!("{} is {what}", path.display()));
    }
    let euid = crate::paths::euid();
    if meta.uid() != euid {
        return Err(format!(
            "{} belongs to uid {}, not to this agent's uid {euid}",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} may be read or written by others (mode {:04o}); chmod 600 it",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Checks a path the daemon will keep a private file at (an audit log, a token sink): its folder
/// is safe ([`check_folder`]) and, if the file exists, it is this uid's own private regular file.
/// Returns the path in the resolved folder.
pub fn check_private_path(path: &Path) -> Result<PathBuf, String> {
    let path = in_safe_folder(path)?;
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path),
        Err(e) => Err(format!("cannot inspect {}: {e}", path.display())),
        Ok(meta) => check_private(&path, &meta).map(|()| path),
    }
}

/// Opens a private file for appending (and reading), created 0600 if missing, after the checks
/// of [`check_private_path`]; the last path component is never followed if it is a symlink.
pub fn open_private_append(path: &Path) -> Result<File, String> {
    let path = check_private_path(path)?;
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => format!("{} is a symbolic link; give the file itself", path.display()),
            _ => format!("cannot open {}: {e}", path.display()),
        })?;
    // The path was checked before it was opened; check what was opened, too.
    let meta = file.metadata().map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
    check_private(&path, &meta)?;
    Ok(file)
}

/// Replaces the file at `path` with `data`: written to a new 0600 file beside it (created
/// exclusively, under a random name, not following symlinks), synced, then renamed over it, so
/// a reader sees the old content or the new, never half. `path` is checked first as
/// [`check_private_path`] does.
pub fn replace_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let path = check_private_path(path).map_err(io::Error::other)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let temp = path.with_file_name(format!(".{name}.{suffix}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)?;
    let written =
        file.write_all(data).and_then(|()| file.sync_all()).and_then(|()| std::fs::rename(&temp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn folders_others_can_change_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let euid = crate::paths::euid();
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        mode(&private, 0o700);
        assert!(check_folder(&private, &[euid]).is_ok());
        mode(&private, 0o770);
        assert!(matches!(check_folder(&private, &[euid]), Err(Unsafe::Writable { mode: 0o770, .. })));
        // Sticky and writable by all, like /tmp: fine above, not as the folder itself.
        mode(&private, 0o1777);
        assert!(check_folder(&private, &[euid]).is_err());
        let inner = private.join("inner");
        std::fs::create_dir(&inner).unwrap();
        mode(&inner, 0o700);
        assert!(check_folder(&inner, &[euid]).is_ok());
        // Not sticky: anyone could rename `inner` away and put their own in its place.
        mode(&private, 0o777);
        assert!(check_folder(&inner, &[euid]).unwrap_err().to_string().contains("writable by others"));
        mode(&private, 0o700);
        // A symlink is resolved, and what it points to is what gets checked.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&inner, &link).unwrap();
        assert_eq!(check_folder(&link, &[euid]).unwrap(), std::fs::canonicalize(&inner).unwrap());
    }

    #[test]
    fn private_files_refuse_symlinks_and_open_modes() {
        let dir = tempfile::tempdir().unwrap();
        mode(dir.path(), 0o700);
        let log = dir.path().join("audit.jsonl");
        let file = open_private_append(&log).unwrap();
        assert_eq!(file.metadata().unwrap().mode() & 0o777, 0o600);
        mode(&log, 0o644);
        assert!(open_private_append(&log).unwrap_err().contains("chmod 600"));
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&log, &link).unwrap();
        assert!(open_private_append(&link).unwrap_err().contains("symbolic link"));
        let dangling = dir.path().join("dangling.jsonl");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(open_private_append(&dangling).unwrap_err().contains("symbolic link"));
        assert!(!dir.path().join("nowhere").exists(), "a dangling symlink was followed");
    }

    #[test]
    fn replace_writes_a_private_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        mode(dir.path(), 0o700);
        let sink = dir.path().join("token");
        replace_private(&sink, b"one\n").unwrap();
        replace_private(&sink, b"two\n").unwrap();
        assert_eq!(std::fs::read(&sink).unwrap(), b"two\n");
        assert_eq!(std::fs::metadata(&sink).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(replace_private(&link, b"x").is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
