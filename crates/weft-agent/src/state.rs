//! What the agent must not forget across restarts: which attachment holds which address and
//! what was registered for it. One JSON file in the state directory, written atomically.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use weft_api::{Attachment, PodRef};
use weft_model::Ipv4Cidr;

use crate::files::{read_if_present, write_atomically};

pub const STATE_FILE: &str = "endpoints.json";

/// What `Register` resolved for an attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    /// The pod-side interface's MAC.
    pub mac: [u8; 6],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointState {
    pub attachment: Attachment,
    pub pod: Option<PodRef>,
    pub address: Ipv4Addr,
    pub registration: Option<Registration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// The pod CIDR the addresses were allocated from.
    pub pod_cidr: Option<Ipv4Cidr>,
    pub endpoints: Vec<EndpointState>,
}

impl AgentState {
    pub fn by_attachment(&self) -> BTreeMap<Attachment, EndpointState> {
        self.endpoints
            .iter()
            .map(|e| (e.attachment.clone(), e.clone()))
            .collect()
    }
}

pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

/// The saved state; none saved yet is the empty state, an unreadable file is an error (better
/// to stop than to hand out addresses pods already hold).
pub fn load(state_dir: &Path) -> anyhow::Result<AgentState> {
    let path = state_path(state_dir);
    match read_if_present(&path)? {
        None => Ok(AgentState::default()),
        Some(text) => {
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
    }
}

pub fn save(state_dir: &Path, state: &AgentState) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let json = serde_json::to_vec_pretty(state).context("encoding the agent state")?;
    write_atomically(&state_path(state_dir), &json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::testing::TempDir;

    #[test]
    fn state_round_trips_and_a_corrupt_file_is_an_error() {
        let dir = TempDir::new("state");
        assert_eq!(load(&dir.0).unwrap(), AgentState::default());
        let state = AgentState {
            pod_cidr: Some("10.42.1.0/24".parse().unwrap()),
            endpoints: vec![EndpointState {
                attachment: Attachment {
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                },
                pod: None,
                address: Ipv4Addr::new(10, 42, 1, 10),
                registration: Some(Registration {
                    host_ifname: "lxc1".into(),
                    host_ifindex: 5,
                    host_mac: [2, 0, 0, 0, 0, 1],
                    mac: [2, 0, 0, 0, 0, 2],
                }),
            }],
        };
        save(&dir.0, &state).unwrap();
        assert_eq!(load(&dir.0).unwrap(), state);
        std::fs::write(state_path(&dir.0), "{").unwrap();
        assert!(load(&dir.0).is_err());
    }
}
