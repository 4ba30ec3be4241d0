//! Security identities of pods, derived from what selects them in policy: the namespace and the
//! pod's labels.
//!
//! Every agent computes the identity by itself, without a cluster-wide allocator, so it is a
//! hash: the same namespace and labels give the same number on every node and across restarts.
//! The caveat: the range holds 2^24 - 256 identities, so two different label sets collide with
//! probability about n^2 / 2^25 for n distinct sets (about 3 % at 1,000 sets). Colliding pods
//! share an identity and policy cannot tell them apart. A cluster-wide allocator (Cilium's
//! CiliumIdentity objects) removes that risk and can replace this function without changing
//! its callers.

use std::collections::BTreeMap;

use weft_common::ipcache::identity::{FIRST_POD, MAX};

use crate::hash::Fnv1a;

/// The identity of a pod of `namespace` with `labels`, in `[FIRST_POD, MAX]`.
pub fn pod_identity(namespace: &str, labels: &BTreeMap<String, String>) -> u32 {
    let mut hash = Fnv1a::new();
    hash.field(namespace.as_bytes());
    // BTreeMap iterates in key order: the hash does not depend on how labels were written.
    for (key, value) in labels {
        hash.field(key.as_bytes());
        hash.field(value.as_bytes());
    }
    let span = u64::from(MAX - FIRST_POD + 1);
    let offset = u32::try_from(hash.finish() % span).unwrap_or(0);
    FIRST_POD + offset
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn same_namespace_and_labels_give_the_same_identity_in_range() {
        let a = pod_identity("web", &labels(&[("app", "traefik"), ("tier", "edge")]));
        let b = pod_identity("web", &labels(&[("tier", "edge"), ("app", "traefik")]));
        assert_eq!(a, b);
        assert!((FIRST_POD..=MAX).contains(&a));
        // A fixed value: every agent, every version must compute the same number.
        assert_eq!(pod_identity("default", &BTreeMap::new()), 12_545_839);
    }

    #[test]
    fn namespace_labels_and_field_boundaries_all_matter() {
        let base = pod_identity("web", &labels(&[("app", "a")]));
        assert_ne!(base, pod_identity("db", &labels(&[("app", "a")])));
        assert_ne!(base, pod_identity("web", &labels(&[("app", "b")])));
        assert_ne!(
            pod_identity("web", &labels(&[("ab", "c")])),
            pod_identity("web", &labels(&[("a", "bc")]))
        );
    }

    #[test]
    fn many_label_sets_spread_without_collisions() {
        let ids: BTreeSet<u32> = (0..2000)
            .map(|i| pod_identity("ns", &labels(&[("app", &format!("app-{i}"))])))
            .collect();
        assert!(ids.len() >= 1999, "{} distinct of 2000", ids.len());
        assert!(ids.iter().all(|id| (FIRST_POD..=MAX).contains(id)));
    }
}
