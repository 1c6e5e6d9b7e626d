//! Durable file replacement: the one place where this server replaces a file. (The only other
//! files it writes are the journal's segments, which [`crate::storage::journal`] appends to and syncs.)
//!
//! A reader sees either the old file or the new one, never a mix, and once [`replace`]
//! returns the new file survives a crash or power loss: the bytes go to a temp file in the
//! same directory, which is fsynced, renamed over the target, and the directory (plus any
//! directory created on the way) is fsynced so the rename itself is on disk.
//!
//! [`replace_unsynced`] is the same replacement without the syncs, for files a journal
//! already made durable: they become durable together, by one [`sync_fs`].
//!
//! Temp files carry [`TEMP_PREFIX`]; one left by a crash is removed at start-up by the store.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Name prefix of the temp files this module creates (a dot, so listings hide them).
pub const TEMP_PREFIX: &str = ".tmp-";

/// Atomically and durably replaces `path` with `bytes`, creating missing parent directories.
///
/// On error nothing is left behind: the temp file is removed and the previous content of
/// `path`, if any, is untouched.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let mut staged = Staged::new_in(dir)?;
    staged.file().write_all(bytes)?;
    staged.commit(path)
}

/// Atomically replaces `path` with `bytes` (readers see the old file or the new one), without
/// waiting for either to reach the disk: after a crash the file may hold any of its recent
/// contents, or none, until [`sync_fs`] has run. For files whose content a journal already
/// holds durably.
pub fn replace_unsynced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let mut staged = Staged::new_in(dir)?;
    staged.file().write_all(bytes)?;
    staged.commit_unsynced(path)
}

/// Makes everything written to the file system holding `path` durable (`syncfs`): one sync
/// for all the files [`replace_unsynced`] wrote, their names and directories.
pub fn sync_fs(path: &Path) -> io::Result<()> {
    let dir = File::open(path)?;
    rustix::fs::syncfs(&dir)?;
    Ok(())
}

/// A file being written that becomes visible, whole and durable, only when committed: the
/// streaming form of [`replace`], for bodies too large to hold in memory or whose final name
/// is only known once they are written (a content hash).
///
/// Dropped without [`Staged::commit`], its temp file is removed.
#[derive(Debug)]
pub struct Staged {
    temp: tempfile::NamedTempFile,
    /// Directories created for the temp file: durable only once their parents are synced.
    created: Vec<PathBuf>,
}

impl Staged {
    /// A new temp file in `dir` (created if missing). `dir` must be on the file system of the
    /// final path, so the commit is a rename.
    pub fn new_in(dir: &Path) -> io::Result<Self> {
        let created = create_dirs(dir)?;
        let temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(dir)?;
        Ok(Self { temp, created })
    }

    /// The temp file, to write to.
    pub fn file(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    /// Fsyncs the temp file and renames it over `path` (creating missing parent directories),
    /// then fsyncs the directories, so the new file survives a crash once this returns.
    pub fn commit(mut self, path: &Path) -> io::Result<()> {
        let dir = path
            .parent()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
        self.temp.as_file().sync_all()?;
        self.created.extend(create_dirs(dir)?);
        self.temp.persist(path).map_err(|e| e.error)?;
        sync_dir(dir)?;
        // A directory created on the way is only durable once its own parent is synced.
        for created_dir in &self.created {
            if let Some(parent) = created_dir.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }
}

impl Staged {
    /// Renames the temp file over `path` without syncing anything (see [`replace_unsynced`]).
    pub fn commit_unsynced(self, path: &Path) -> io::Result<()> {
        self.temp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    /// [`Staged::commit`] to a name that must not exist yet: `AlreadyExists` when it does, and
    /// the temp file is removed (see [`move_new`]).
    pub fn commit_new(self, path: &Path) -> io::Result<()> {
        self.temp.as_file().sync_all()?;
        move_new(self.temp.path(), path)?;
        // Moved: nothing is left under the temp name to remove.
        self.temp.into_temp_path().keep().map_err(|e| e.error)?;
        Ok(())
    }
}

/// Durably renames `from` over `to` (both in one directory).
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    match to.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Durably moves `from` to `to`, a name that must not exist yet (`AlreadyExists` otherwise:
/// the move never replaces a file), creating `to`'s missing directories. Both directories are
/// synced, so after a crash the file is under exactly one of its names.
pub fn move_new(from: &Path, to: &Path) -> io::Result<()> {
    let dir = to
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let created = create_dirs(dir)?;
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => {}
        // A file system without RENAME_NOREPLACE. The callers hold the storage lock, so nothing
        // else creates `to` between the look and the rename.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            if fs::symlink_metadata(to).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", to.display()),
                ));
            }
            fs::rename(from, to)?;
        }
        Err(e) => return Err(e.into()),
    }
    sync_dir(dir)?;
    if let Some(source_dir) = from.parent()
        && source_dir != dir
    {
        sync_dir(source_dir)?;
    }
    for created_dir in &created {
        if let Some(parent) = created_dir.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Durably removes a file (its directory is synced); `false` when there was none.
pub fn remove(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(true)
}

/// An exclusive advisory lock (`flock`) on `path`, created if missing, without waiting: `None`
/// while another process holds it. Held until the file returned is dropped, or the process
/// ends, however it ends.
pub fn try_lock_exclusive(path: &Path) -> io::Result<Option<File>> {
    let file = open_lock(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

fn open_lock(path: &Path) -> io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Fsyncs a directory, so the names created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing ancestors; returns the directories it created, outermost first.
fn create_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(d) = cursor {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d.to_path_buf());
        cursor = d.parent();
    }
    missing.reverse();
    for d in &missing {
        match fs::create_dir(d) {
            Ok(()) => {}
            // Another writer created it first; it still needs its parent synced, which the
            // caller does for every directory in the list.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(missing)
}

/// Whether `name` is a temp file of [`replace`] or [`Staged`] (to be swept at start-up).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// Removes the temp files a crash left directly in `dir` (at start-up, before any writer).
pub fn remove_temp_files(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if is_temp_name(&entry.file_name().to_string_lossy()) {
            tracing::info!(path = %entry.path().display(), "removing temp file left by a crash");
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The directories directly under `dir`.
pub fn subdirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_creates_directories_and_leaves_no_temp_file() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("a/b/c.json");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("c.json")]);
    }

    #[test]
    fn a_staged_file_appears_only_when_committed() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("cas/ab/abc");
        let mut staged = Staged::new_in(&root.path().join("cas")).unwrap();
        staged.file().write_all(b"streamed").unwrap();
        assert!(!target.exists());
        staged.commit(&target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"streamed");
        // Dropped without a commit: nothing is left behind.
        let mut abandoned = Staged::new_in(&root.path().join("cas")).unwrap();
        abandoned.file().write_all(b"half").unwrap();
        drop(abandoned);
        let left: Vec<_> = fs::read_dir(root.path().join("cas"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("ab")]);
    }

    #[test]
    fn a_move_never_replaces_a_file() {
        let root = tempfile::tempdir().unwrap();
        let (from, to) = (root.path().join("AB/x"), root.path().join("ab/y"));
        fs::create_dir_all(from.parent().unwrap()).unwrap();
        fs::write(&from, b"moved").unwrap();
        move_new(&from, &to).unwrap();
        assert_eq!(fs::read(&to).unwrap(), b"moved");
        assert!(!from.exists());
        fs::write(&from, b"second").unwrap();
        let refused = move_new(&from, &to).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&to).unwrap(), b"moved");
        assert_eq!(fs::read(&from).unwrap(), b"second");
    }

    #[test]
    fn a_failed_replace_keeps_the_old_file() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("x.json");
        replace(&path, b"old").unwrap();
        // Renaming a file over a non-empty directory fails after the temp file was written.
        let blocked = root.path().join("dir");
        fs::create_dir_all(blocked.join("inner")).unwrap();
        assert!(replace(&blocked, b"new").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let temps = fs::read_dir(root.path())
            .unwrap()
            .filter(|e| is_temp_name(&e.as_ref().unwrap().file_name().to_string_lossy()))
            .count();
        assert_eq!(temps, 0);
    }
}
