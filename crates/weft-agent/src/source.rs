//! Where the agent learns the cluster state. The `manifests` source reads a directory of YAML
//! files; a Kubernetes watcher implements the same trait.

use std::{collections::BTreeMap, fs, path::PathBuf};

use anyhow::Context as _;
use weft_model::Store;

pub trait Source {
    /// The whole cluster state when it changed since the last call, `Ok(None)` when it did not.
    /// An error (a malformed object) is reported once per change; the caller keeps its
    /// previous store.
    fn poll(&mut self) -> anyhow::Result<Option<Store>>;
}

/// A directory of manifests (`*.yaml`, `*.yml`; hidden files such as temp files are skipped),
/// re-read on every poll and compared by contents.
pub struct ManifestsSource {
    dir: PathBuf,
    last: Option<BTreeMap<String, String>>,
}

impl ManifestsSource {
    pub fn new(dir: PathBuf) -> ManifestsSource {
        ManifestsSource { dir, last: None }
    }

    fn snapshot(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut files = BTreeMap::new();
        let entries =
            fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", self.dir.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if !is_file
                || name.starts_with('.')
                || !(name.ends_with(".yaml") || name.ends_with(".yml"))
            {
                continue;
            }
            match fs::read_to_string(entry.path()) {
                Ok(text) => {
                    files.insert(name, text);
                }
                // Renamed or removed since the listing: the next poll sees the result.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", entry.path().display()));
                }
            }
        }
        Ok(files)
    }
}

impl Source for ManifestsSource {
    fn poll(&mut self) -> anyhow::Result<Option<Store>> {
        let files = self.snapshot()?;
        if self.last.as_ref() == Some(&files) {
            return Ok(None);
        }
        let store = Store::from_manifests(files.iter().map(|(n, t)| (n.as_str(), t.as_str())));
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
