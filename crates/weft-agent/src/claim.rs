//! Claiming the node's pod CIDR in a manifests directory shared by every agent of the cluster.
//!
//! One claim file per CIDR in `<manifests>/.ipam/`, named after the CIDR (`10.42.1.0_24`) and
//! holding the owner's node name, created exclusively: of two agents racing for a CIDR exactly
//! one creates the file, the other moves on to the next free CIDR. The winner then publishes
//! its `WeftNode`. A node that already has a `WeftNode` or a claim keeps its CIDR.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use weft_model::{ClusterConfig, Ipv4Cidr, Store, ipam::node_cidr_candidate};

use crate::files::{create_exclusively, read_if_present};

pub const CLAIMS_DIR: &str = ".ipam";

pub fn claims_dir(manifests_dir: &Path) -> PathBuf {
    manifests_dir.join(CLAIMS_DIR)
}

fn claim_file_name(cidr: Ipv4Cidr) -> String {
    format!("{}_{}", cidr.network(), cidr.prefix_len())
}

fn cidr_of_claim_file(name: &str) -> Option<Ipv4Cidr> {
    let (addr, len) = name.split_once('_')?;
    Ipv4Cidr::new(addr.parse().ok()?, len.parse().ok()?).ok()
}

/// The CIDRs claimed in the directory, with their owners. A claim being written right now may
/// read as empty: it is taken all the same.
pub fn read_claims(manifests_dir: &Path) -> anyhow::Result<BTreeMap<Ipv4Cidr, String>> {
    let dir = claims_dir(manifests_dir);
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let Some(cidr) = entry.file_name().to_str().and_then(cidr_of_claim_file) else {
            continue;
        };
        let owner = read_if_present(&entry.path())?.unwrap_or_default();
        out.insert(cidr, owner.trim().to_string());
    }
    Ok(out)
}

/// Claims `cidr` for `node`: Ok(true) when it is now (or was already) this node's.
fn try_claim(manifests_dir: &Path, cidr: Ipv4Cidr, node: &str) -> anyhow::Result<bool> {
    let path = claims_dir(manifests_dir).join(claim_file_name(cidr));
    if create_exclusively(&path, format!("{node}\n").as_bytes())? {
        return Ok(true);
    }
    let owner = read_if_present(&path)?.unwrap_or_default();
    Ok(owner.trim() == node)
}

/// The pod CIDR of `node`, claimed in `manifests_dir`: the one its `WeftNode` in `store`
/// names, else the one it claimed before, else the first free one of the cluster pool.
pub fn claim_node_cidr(
    manifests_dir: &Path,
    node: &str,
    config: &ClusterConfig,
    store: &Store,
) -> anyhow::Result<Ipv4Cidr> {
    let dir = claims_dir(manifests_dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let pod_cidr_of_node: BTreeMap<String, Ipv4Cidr> = store
        .weft_nodes
        .values()
        .map(|n| (n.metadata.name.clone(), n.spec.pod_cidr))
        .collect();
    if let Some(&cidr) = pod_cidr_of_node.get(node) {
        if !try_claim(manifests_dir, cidr, node)? {
            bail!(
                "{cidr} of WeftNode {node} is claimed by another node in {}",
                dir.display()
            );
        }
        return Ok(cidr);
    }
    let claims = read_claims(manifests_dir)?;
    if let Some((&cidr, _)) = claims.iter().find(|(_, owner)| *owner == node) {
        return Ok(cidr);
    }
    let mut taken: BTreeSet<Ipv4Cidr> = claims.keys().copied().collect();
    loop {
        let candidate = node_cidr_candidate(config, node, &pod_cidr_of_node, &taken)?;
        if try_claim(manifests_dir, candidate, node)? {
            return Ok(candidate);
        }
        taken.insert(candidate);
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Barrier, thread};

    use super::*;
    use crate::files::testing::TempDir;

    #[test]
    fn agents_claiming_at_once_get_distinct_cidrs_and_keep_them() {
        let dir = TempDir::new("claim");
        let config = ClusterConfig::default();
        let nodes: Vec<String> = (1..=6).map(|i| format!("vps{i}")).collect();
        let barrier = Barrier::new(nodes.len());
        let claimed: Vec<(String, Ipv4Cidr)> = thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|node| {
                    let (dir, config, barrier) = (&dir.0, &config, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let cidr = claim_node_cidr(dir, node, config, &Store::default()).unwrap();
                        (node.clone(), cidr)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let distinct: BTreeSet<Ipv4Cidr> = claimed.iter().map(|(_, c)| *c).collect();
        assert_eq!(distinct.len(), nodes.len(), "{claimed:?}");
        assert_eq!(
            distinct.iter().map(ToString::to_string).collect::<Vec<_>>(),
            (0..6)
                .map(|i| format!("10.42.{i}.0/24"))
                .collect::<Vec<_>>()
        );
        // A restart (no WeftNode written yet) finds its claim again.
        for (node, cidr) in &claimed {
            assert_eq!(
                claim_node_cidr(&dir.0, node, &config, &Store::default()).unwrap(),
                *cidr
            );
        }
        assert_eq!(read_claims(&dir.0).unwrap().len(), 6);
    }

    #[test]
    fn a_weftnode_keeps_its_cidr_and_a_foreign_claim_on_it_is_a_conflict() {
        let dir = TempDir::new("claim-conflict");
        let config = ClusterConfig::default();
        let manifest = "apiVersion: weft.io/v1alpha1\nkind: WeftNode\nmetadata: {name: vps1}\nspec: {podCIDR: 10.42.7.0/24, underlayIP: 198.51.100.1}\n";
        let store = Store::from_manifests([("n.yaml", manifest)]).unwrap();
        assert_eq!(
            claim_node_cidr(&dir.0, "vps1", &config, &store)
                .unwrap()
                .to_string(),
            "10.42.7.0/24"
        );
        assert_eq!(
            claim_node_cidr(&dir.0, "vps2", &config, &store)
                .unwrap()
                .to_string(),
            "10.42.0.0/24"
        );
        let impostor = manifest.replace("vps1", "vps3");
        let store = Store::from_manifests([("n.yaml", impostor.as_str())]).unwrap();
        let err = claim_node_cidr(&dir.0, "vps3", &config, &store).unwrap_err();
        assert!(err.to_string().contains("claimed by another node"), "{err}");
    }
}
