//! The CustomResourceDefinitions committed under `deploy/crds/` are exactly what the Rust types
//! generate. `WEFT_WRITE_CRDS=1 cargo test -p weft-model --test crds` rewrites them.

use std::{fs, path::PathBuf};

use weft_model::crd::{definition_yaml, definitions};

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds")
}

#[test]
fn committed_crds_equal_the_generated_ones() {
    let dir = crds_dir();
    let write = std::env::var_os("WEFT_WRITE_CRDS").is_some();
    let mut stale = Vec::new();
    for (file, crd) in definitions() {
        let generated = definition_yaml(&crd).expect("a definition serializes");
        let path = dir.join(file);
        if write {
            fs::create_dir_all(&dir).expect("create deploy/crds");
            fs::write(&path, &generated).expect("write the definition");
            continue;
        }
        match fs::read_to_string(&path) {
            Ok(committed) if committed == generated => {}
            Ok(_) => stale.push(format!("{} differs", path.display())),
            Err(e) => stale.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "{}; regenerate with WEFT_WRITE_CRDS=1 cargo test -p weft-model --test crds",
        stale.join("; ")
    );
    let mut on_disk: Vec<String> = fs::read_dir(&dir)
        .expect("deploy/crds")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = definitions().iter().map(|(f, _)| f.to_string()).collect();
    expected.sort();
    assert_eq!(
        on_disk, expected,
        "deploy/crds holds exactly the generated definitions"
    );
}
