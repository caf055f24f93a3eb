//! Directory outputs that appear all at once or not at all.

use std::path::{Path, PathBuf};

use microllm_core::{Error, Result};

/// A directory being written under a temporary name, renamed to its final name by
/// [`AtomicDir::commit`]. Dropped without commit, it removes itself.
#[derive(Debug)]
pub struct AtomicDir {
    tmp: PathBuf,
    dest: PathBuf,
    overwrite: bool,
    committed: bool,
}

impl AtomicDir {
    /// Starts writing `dest`. Fails early if `dest` exists (unless `overwrite`) or its parent
    /// cannot be written, so a bad output path is reported before any long work.
    pub fn create(dest: &Path, overwrite: bool) -> Result<Self> {
        if dest.exists() && !overwrite {
            return Err(Error::Invalid(format!(
                "output {} already exists (pass --force to replace it)",
                dest.display()
            )));
        }
        let tmp = temp_sibling(dest)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
            overwrite,
            committed: false,
        })
    }

    /// The temporary directory to write into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The final destination.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Moves the finished directory into place.
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.dest.exists() {
            if !self.overwrite {
                return Err(Error::Invalid(format!(
                    "output {} appeared while writing; not replacing it",
                    self.dest.display()
                )));
            }
            let mut old = self.tmp.clone().into_os_string();
            old.push(".old");
            let old = PathBuf::from(old);
            std::fs::rename(&self.dest, &old).map_err(|e| Error::io(&self.dest, e))?;
            std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
            let _ = if old.is_dir() {
                std::fs::remove_dir_all(&old)
            } else {
                std::fs::remove_file(&old)
            };
        } else {
            std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        }
        self.committed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Places a copy of the finished directory `src` (plain files only) at `dest`, atomically,
/// with every file hard-linked where the file system allows (copied where it does not): a
/// model written once into a work directory becomes the output without a second copy on disk.
pub fn link_dir(src: &Path, dest: &Path, overwrite: bool) -> Result<PathBuf> {
    let dir = AtomicDir::create(dest, overwrite)?;
    let entries = std::fs::read_dir(src).map_err(|e| Error::io(src, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(src, e))?;
        let from = entry.path();
        if !from.is_file() {
            return Err(Error::Invalid(format!(
                "{}: only plain files can be placed as an output",
                from.display()
            )));
        }
        let to = dir.path().join(entry.file_name());
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
        }
    }
    dir.commit()
}

/// Writes one file atomically: `write` fills a temporary file beside `dest`, which is renamed
/// to `dest` only if `write` succeeds.
pub fn write_file_atomic(dest: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_sibling(dest)?;
    let result =
        write(&tmp).and_then(|()| std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `.NAME.partial-PID` beside `dest` (same directory, so the final rename cannot cross file
/// systems), creating the parent directory if needed. Partial outputs of `dest` left by
/// processes that no longer run (killed with `kill -9`) are removed first.
pub(crate) fn temp_sibling(dest: &Path) -> Result<PathBuf> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let name = dest
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("output {} has no name", dest.display())))?
        .to_string_lossy();
    remove_stale_partials(&parent, &name);
    Ok(parent.join(format!(".{name}.partial-{}", std::process::id())))
}

/// Removes `.NAME.partial-PID…` entries in `parent` whose process is gone. Only Linux can tell
/// (by `/proc/PID`); elsewhere they stay. Failures are ignored: this is tidying, not the work.
fn remove_stale_partials(parent: &Path, name: &str) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let prefix = format!(".{name}.partial-");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let digits = rest.split('.').next().unwrap_or_default();
        let Ok(pid) = digits.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_dir_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("out");
        {
            let dir = AtomicDir::create(&dest, false).unwrap();
            std::fs::write(dir.path().join("x"), b"1").unwrap();
        }
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn linked_dir_holds_the_same_files() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("work");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("a"), b"one").unwrap();
        std::fs::write(src.join("b"), b"two").unwrap();
        let dest = root.path().join("out");
        link_dir(&src, &dest, false).unwrap();
        assert_eq!(std::fs::read(dest.join("a")).unwrap(), b"one");
        assert_eq!(std::fs::read(dest.join("b")).unwrap(), b"two");
        // The source may go; the output stays whole.
        std::fs::remove_dir_all(&src).unwrap();
        assert_eq!(std::fs::read(dest.join("b")).unwrap(), b"two");
        // An existing output is replaced only with overwrite.
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("c"), b"three").unwrap();
        assert!(link_dir(&src, &dest, false).is_err());
        link_dir(&src, &dest, true).unwrap();
        assert!(dest.join("c").is_file() && !dest.join("a").exists());
    }

    #[test]
    fn commit_replaces_only_with_overwrite() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        assert!(AtomicDir::create(&dest, false).is_err());
        let dir = AtomicDir::create(&dest, true).unwrap();
        std::fs::write(dir.path().join("x"), b"1").unwrap();
        dir.commit().unwrap();
        assert!(dest.join("x").is_file());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn partials_of_dead_processes_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("out.gguf");
        // PIDs above the kernel's limit (4194304) never run; this process and its parent do.
        let dead = root.path().join(".out.gguf.partial-4999999");
        let dead_dir = root.path().join(".out.gguf.partial-4999998.old");
        let ours = root
            .path()
            .join(format!(".out.gguf.partial-{}", std::process::id()));
        let alive = root.path().join(format!(
            ".out.gguf.partial-{}",
            std::os::unix::process::parent_id()
        ));
        let other = root.path().join(".other.partial-4999999");
        std::fs::write(&dead, b"x").unwrap();
        std::fs::create_dir(&dead_dir).unwrap();
        for p in [&ours, &alive, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        write_file_atomic(&dest, |tmp| {
            std::fs::write(tmp, b"1").map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
        assert!(!dead.exists() && !dead_dir.exists());
        assert!(alive.exists() && other.exists() && dest.is_file());
    }
}
