//! File writes other processes may read at any moment: always whole (temp file + rename).

use std::{
    fs,
    io::Write as _,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, anyhow};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temp file name beside `path`, hidden (leading '.') so directory watchers skip it.
fn temp_beside(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id())))
}

/// Writes `contents` to a hidden temp file beside `path`, flushed to disk, then renames it over
/// `path`: readers see the old or the new contents, never a part.
pub fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let temp = write_temp(path, contents)?;
    fs::rename(&temp, path).with_context(|| {
        let _ = fs::remove_file(&temp);
        format!("renaming {} to {}", temp.display(), path.display())
    })
}

/// Creates `path` with `contents` only if it does not exist yet, atomically (hard link of a
/// complete temp file): Ok(true) when created, Ok(false) when it already existed.
pub fn create_exclusively(path: &Path, contents: &[u8]) -> anyhow::Result<bool> {
    let temp = write_temp(path, contents)?;
    let linked = fs::hard_link(&temp, path);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

fn write_temp(path: &Path, contents: &[u8]) -> anyhow::Result<std::path::PathBuf> {
    let temp = temp_beside(path)?;
    let mut file =
        fs::File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temp.display()))?;
    Ok(temp)
}

/// Removes a file; an absent one is fine. Returns whether it existed.
pub fn remove_if_present(path: &Path) -> anyhow::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// The contents of a file, `None` when it does not exist.
pub fn read_if_present(path: &Path) -> anyhow::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;

    /// A fresh temp directory, removed when dropped.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("weft-agent-test-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::TempDir, *};

    #[test]
    fn exclusive_create_refuses_an_existing_file_and_leaves_no_temp() {
        let dir = TempDir::new("files");
        let path = dir.0.join("claim");
        assert!(create_exclusively(&path, b"a").unwrap());
        assert!(!create_exclusively(&path, b"b").unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "a");
        write_atomically(&path, b"c").unwrap();
        assert_eq!(read_if_present(&path).unwrap().as_deref(), Some("c"));
        assert_eq!(
            fs::read_dir(&dir.0).unwrap().count(),
            1,
            "no temp file left"
        );
        assert!(remove_if_present(&path).unwrap());
        assert!(!remove_if_present(&path).unwrap());
        assert_eq!(read_if_present(&path).unwrap(), None);
    }
}
