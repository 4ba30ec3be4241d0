//! Where the agent learns the cluster state. The `manifests` source reads a directory of YAML
//! files; a Kubernetes watcher implements the same trait.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use weft_model::{ManifestCache, Store};

pub trait Source {
    /// The whole cluster state when it changed since the last call, `Ok(None)` when it did not.
    /// An error (a malformed object) is reported once per change; the caller keeps its
    /// previous store.
    fn poll(&mut self) -> anyhow::Result<Option<Store>>;
}

/// A directory of manifests (`*.yaml`, `*.yml`; hidden files such as temp files are skipped),
/// compared by contents. A poll looks at the directory's modification time first (every write
/// through a rename, as the lab and the agents do, changes it) and lists it again only when it
/// changed or [`FULL_SCAN_INTERVAL`] has passed (which catches files edited in place); a
/// listing reads only the files whose size, modification time or inode changed, and parses
/// only those whose text changed.
pub struct ManifestsSource {
    dir: PathBuf,
    cache: ManifestCache,
    last: Option<BTreeMap<String, String>>,
    stamps: BTreeMap<String, FileStamp>,
    dir_stamp: Option<SystemTime>,
    last_full_scan: Option<Instant>,
}

/// How often the directory is listed even when its modification time did not change.
pub const FULL_SCAN_INTERVAL: Duration = Duration::from_secs(5);
const RECENT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> FileStamp {
        FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            ino: meta.ino(),
        }
    }
}

impl ManifestsSource {
    pub fn new(dir: PathBuf) -> ManifestsSource {
        ManifestsSource {
            dir,
            cache: ManifestCache::default(),
            last: None,
            stamps: BTreeMap::new(),
            dir_stamp: None,
            last_full_scan: None,
        }
    }

    fn is_manifest(name: &str) -> bool {
        !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
    }

    /// Whether the directory may have changed since the last listing. A modification time
    /// under [`RECENT`] old is not trusted: the clock behind it is coarse, so a second write in
    /// the same tick would leave it unchanged.
    fn may_have_changed(&self, dir_stamp: Option<SystemTime>, now: Instant) -> bool {
        let recent = dir_stamp
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_none_or(|age| age < RECENT);
        self.last.is_none()
            || recent
            || dir_stamp != self.dir_stamp
            || self
                .last_full_scan
                .is_none_or(|t| now.duration_since(t) >= FULL_SCAN_INTERVAL)
    }

    /// The directory's manifests by name, read again only where their stamp changed.
    fn snapshot(&mut self) -> anyhow::Result<BTreeMap<String, String>> {
        let previous = self.last.as_ref();
        let mut files = BTreeMap::new();
        let mut stamps = BTreeMap::new();
        let entries =
            fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", self.dir.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !ManifestsSource::is_manifest(&name) {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(meta) if meta.is_file() => meta,
                Ok(_) => continue,
                // Renamed or removed since the listing: the next poll sees the result.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", entry.path().display()));
                }
            };
            let stamp = FileStamp::of(&meta);
            if self.stamps.get(&name) == Some(&stamp)
                && let Some(text) = previous.and_then(|p| p.get(&name))
            {
                files.insert(name.clone(), text.clone());
                stamps.insert(name, stamp);
                continue;
            }
            match fs::read_to_string(entry.path()) {
                Ok(text) => {
                    files.insert(name.clone(), text);
                    stamps.insert(name, stamp);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", entry.path().display()));
                }
            }
        }
        self.stamps = stamps;
        Ok(files)
    }
}

impl Source for ManifestsSource {
    fn poll(&mut self) -> anyhow::Result<Option<Store>> {
        let now = Instant::now();
        let dir_stamp = fs::metadata(&self.dir).and_then(|m| m.modified()).ok();
        if !self.may_have_changed(dir_stamp, now) {
            return Ok(None);
        }
        let files = self.snapshot()?;
        self.dir_stamp = dir_stamp;
        self.last_full_scan = Some(now);
        if self.last.as_ref() == Some(&files) {
            return Ok(None);
        }
        let store = self
            .cache
            .store(files.iter().map(|(n, t)| (n.as_str(), t.as_str())));
        self.last = Some(files);
        Ok(Some(store.with_context(|| {
            format!("manifests in {}", self.dir.display())
        })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::{testing::TempDir, write_atomically};

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n";

    #[test]
    fn reports_changes_once_and_errors_once() {
        let dir = TempDir::new("source");
        let mut source = ManifestsSource::new(dir.0.clone());
        assert_eq!(source.poll().unwrap(), Some(Store::default()));
        assert_eq!(source.poll().unwrap(), None);
        write_atomically(&dir.0.join("ns.yaml"), NS.as_bytes()).unwrap();
        fs::write(dir.0.join("notes.txt"), "ignored").unwrap();
        fs::write(dir.0.join(".ns.yaml.tmp-1"), "kind: [").unwrap();
        let store = source.poll().unwrap().unwrap();
        assert!(store.namespaces.contains_key("web"));
        assert_eq!(source.poll().unwrap(), None);
        fs::write(dir.0.join("bad.yaml"), "kind: [").unwrap();
        let err = source.poll().unwrap_err();
        assert!(format!("{err:#}").contains("bad.yaml"), "{err:#}");
        assert_eq!(
            source.poll().unwrap(),
            None,
            "the same error is not repeated"
        );
        fs::remove_file(dir.0.join("bad.yaml")).unwrap();
        assert!(source.poll().unwrap().is_some());
    }
}
