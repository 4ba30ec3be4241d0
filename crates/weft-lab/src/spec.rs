//! What a lab is asked to be: a name and a size.

use serde::{Deserialize, Serialize};

/// The longest lab name: every object of the lab carries it as a prefix, and interface-like
/// names built from it must stay short.
pub const MAX_NAME_LEN: usize = 12;
pub const MAX_NODES: u32 = 9;
pub const MAX_PODS_PER_NODE: u32 = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    pub name: String,
    pub nodes: u32,
    pub pods_per_node: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "invalid lab name `{name}`: {reason} (a lab name is 1 to {MAX_NAME_LEN} characters of \
         a-z and 0-9, starting with a letter)"
    )]
    Name { name: String, reason: &'static str },
    #[error("a lab has 1 to {MAX_NODES} nodes, not {0}")]
    Nodes(u32),
    #[error("a lab has 0 to {MAX_PODS_PER_NODE} hand-wired pods per node, not {0}")]
    PodsPerNode(u32),
}

impl LabSpec {
    /// A lab of the default size (3 nodes, 2 pods each).
    pub fn new(name: impl Into<String>) -> LabSpec {
        LabSpec {
            name: name.into(),
            nodes: 3,
            pods_per_node: 2,
        }
    }

    pub fn with_size(name: impl Into<String>, nodes: u32, pods_per_node: u32) -> LabSpec {
        LabSpec {
            name: name.into(),
            nodes,
            pods_per_node,
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(&self.name)?;
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return Err(SpecError::Nodes(self.nodes));
        }
        if self.pods_per_node > MAX_PODS_PER_NODE {
            return Err(SpecError::PodsPerNode(self.pods_per_node));
        }
        Ok(())
    }
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec::new("weft")
    }
}

/// A lab name has no `-`, so lab `a`'s objects (`a-...`) are never confused with another lab's.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let refuse = |reason| {
        Err(SpecError::Name {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return refuse("it is too long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return refuse("it has a character other than a-z and 0-9");
    }
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return refuse("it does not start with a letter");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_size_is_three_nodes_of_two_pods() {
        let spec = LabSpec::new("demo");
        assert_eq!((spec.nodes, spec.pods_per_node), (3, 2));
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(LabSpec::default().validate(), Ok(()));
    }

    #[test]
    fn accepts_names_within_the_rules() {
        for name in ["a", "lab1", "t0abcdefghij", "x9"] {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_bad_names_saying_why() {
        let cases = [
            ("", "empty"),
            ("abcdefghijklm", "too long"),
            ("a-b", "other than a-z"),
            ("Lab", "other than a-z"),
            ("a/b", "other than a-z"),
            ("a.b", "other than a-z"),
            ("1lab", "start with a letter"),
        ];
        for (name, why) in cases {
            let err = LabSpec::new(name).validate().expect_err(name).to_string();
            assert!(err.contains(why), "{name}: {err}");
            assert!(err.contains(&format!("`{name}`")), "{name}: {err}");
        }
    }

    #[test]
    fn refuses_bad_sizes() {
        for nodes in [0, 10] {
            let err = LabSpec::with_size("a", nodes, 2)
                .validate()
                .expect_err("nodes");
            assert_eq!(err, SpecError::Nodes(nodes));
            assert!(err.to_string().contains("1 to 9 nodes"));
        }
        let err = LabSpec::with_size("a", 3, 21).validate().expect_err("pods");
        assert_eq!(err, SpecError::PodsPerNode(21));
        assert!(err.to_string().contains("0 to 20 hand-wired pods per node"));
        assert_eq!(
            LabSpec::with_size("a", 3, 0).validate(),
            Ok(()),
            "0: the pods come from Weft"
        );
        assert_eq!(LabSpec::with_size("a", 9, 20).validate(), Ok(()));
        assert_eq!(LabSpec::with_size("a", 1, 1).validate(), Ok(()));
    }
}
