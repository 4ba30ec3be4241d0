//! Which node a command talks to: its agent's socket, its pin directory and, in a lab, its
//! network namespace. The one place that knows about labs for `status`, `bpf`, `observe` and
//! `doctor`.
//!
//! Precedence, per path: an explicit `--socket` / `--pin-dir` wins; else `--lab NAME [--node
//! NODE]` resolves it from the lab's state; else the real node's default (the agent's socket
//! `weft_api::DEFAULT_SOCKET`, pins in [`DEFAULT_PIN_DIR`]). Without `--lab` everything runs in
//! the current network namespace; with it, what must run on the node (interface names, doctor's
//! rule and link checks) runs in the node's.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::Args;
use weft_lab::{NodeSpec, Topology, netns::run_in, runtime};
use weft_model::ClusterConfig;

/// Where a node's agent pins its maps and links unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/weft";

/// `[--socket PATH] [--pin-dir DIR] [--lab NAME [--node NODE]]`.
#[derive(Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct Address {
    /// The agent's local API socket [default: /run/weft/agent.sock, or the lab node's].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The bpffs directory of the node's pinned maps [default: /sys/fs/bpf/weft, or the lab
    /// node's].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// A netns lab on this machine: resolves the paths of its nodes (all of them unless
    /// --node), and runs node-side checks in the node's network namespace.
    #[arg(long, value_name = "NAME")]
    pub lab: Option<String>,
    /// Only this node of the lab.
    #[arg(long, value_name = "NODE", requires = "lab")]
    pub node: Option<String>,
}

/// A node as a command reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The lab node's name, or this machine's host name.
    pub name: String,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    /// The lab node's network namespace; `None`: the current one.
    pub netns: Option<String>,
}

impl Node {
    /// Runs `f` in the node's network namespace (on a thread of its own in a lab node's; in
    /// place otherwise). Processes `f` spawns are in that namespace too.
    pub fn run<F, R>(&self, f: F) -> anyhow::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        match &self.netns {
            Some(netns) => run_in(netns, f),
            None => Ok(f()),
        }
    }

    /// The pin directory, when it is there.
    pub fn pins(&self) -> anyhow::Result<&Path> {
        if !self.pin_dir.is_dir() {
            bail!(
                "no pin directory {} on node {}: is weft-agent running? (--pin-dir)",
                self.pin_dir.display(),
                self.name
            );
        }
        Ok(&self.pin_dir)
    }
}

/// What `weft status` says of a socket that is not there.
pub fn no_agent(socket: &Path) -> String {
    format!(
        "no agent at {}: is weft-agent running? (--socket)",
        socket.display()
    )
}

/// The nodes `address` names, from the lab's state when it names a lab.
pub fn resolve(address: &Address) -> anyhow::Result<Vec<Node>> {
    resolve_with(address, weft_lab::load, &host_name())
}

/// [`resolve`] with the lab's topology from `load` and this machine's name `host`.
pub fn resolve_with(
    address: &Address,
    load: impl FnOnce(&str) -> anyhow::Result<Topology>,
    host: &str,
) -> anyhow::Result<Vec<Node>> {
    let Some(lab) = &address.lab else {
        if let Some(node) = &address.node {
            bail!("--node {node} selects a node of a lab: name the lab with --lab");
        }
        return Ok(vec![Node {
            name: host.to_string(),
            socket: (address.socket.clone()).unwrap_or_else(|| weft_api::DEFAULT_SOCKET.into()),
            pin_dir: (address.pin_dir.clone()).unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
            netns: None,
        }]);
    };
    let topology = load(lab)?;
    let nodes = select_nodes(&topology, address.node.as_deref())?;
    if nodes.len() > 1 && (address.socket.is_some() || address.pin_dir.is_some()) {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        bail!(
            "--socket and --pin-dir name one node's paths, and lab {lab} has {} nodes ({}): \
             add --node",
            nodes.len(),
            names.join(", ")
        );
    }
    Ok(nodes
        .into_iter()
        .map(|n| Node {
            name: n.name.clone(),
            socket: (address.socket.clone())
                .unwrap_or_else(|| runtime::agent_socket(&topology.name, &n.name)),
            pin_dir: (address.pin_dir.clone()).unwrap_or_else(|| n.pin_dir.clone()),
            netns: Some(n.netns.clone()),
        })
        .collect())
}

/// The cluster's configuration as far as the node-side checks need it: the lab's values with
/// `--lab`, else the file given (the agent's `--config`), else Weft's defaults.
pub fn cluster_config(address: &Address, config: Option<&Path>) -> anyhow::Result<ClusterConfig> {
    if let Some(path) = config {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return ClusterConfig::from_yaml(&text)
            .with_context(|| format!("parsing {}", path.display()));
    }
    match &address.lab {
        Some(lab) => runtime::cluster_config(lab),
        None => Ok(ClusterConfig::default()),
    }
}

/// The nodes `node` selects: that one, or all of them.
fn select_nodes<'a>(t: &'a Topology, node: Option<&str>) -> anyhow::Result<Vec<&'a NodeSpec>> {
    match node {
        None => Ok(t.nodes.iter().collect()),
        Some(name) => match t.node(name) {
            Some(n) => Ok(vec![n]),
            None => {
                let names: Vec<&str> = t.nodes.iter().map(|n| n.name.as_str()).collect();
                bail!(
                    "lab {} has no node {name} (its nodes: {})",
                    t.name,
                    names.join(", ")
                )
            }
        },
    }
}

/// This machine's name in the current UTS namespace, as the kubelet names its node by default.
fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser};
    use weft_lab::{LabSpec, plan};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        address: Address,
    }

    fn parse(args: &[&str]) -> Result<Address, clap::Error> {
        Cli::try_parse_from(std::iter::once("weft").chain(args.iter().copied())).map(|c| c.address)
    }

    fn lab(name: &str) -> anyhow::Result<Topology> {
        plan(&LabSpec::with_size(name, 2, 0))
    }

    fn resolved(args: &[&str]) -> anyhow::Result<Vec<Node>> {
        resolve_with(&parse(args)?, lab, "host1")
    }

    fn no_lab(_: &str) -> anyhow::Result<Topology> {
        panic!("no lab is loaded without --lab")
    }

    #[test]
    fn neither_flag_nor_lab_is_the_real_node_in_this_namespace() {
        let nodes = resolve_with(&parse(&[]).expect("parses"), no_lab, "host1").expect("node");
        assert_eq!(
            nodes,
            [Node {
                name: "host1".into(),
                socket: "/run/weft/agent.sock".into(),
                pin_dir: "/sys/fs/bpf/weft".into(),
                netns: None,
            }]
        );
    }

    #[test]
    fn the_default_socket_is_the_agents_and_the_help_says_both_defaults() {
        let nodes = resolve_with(&Address::default(), no_lab, "h").expect("node");
        assert_eq!(nodes[0].socket, Path::new(weft_api::DEFAULT_SOCKET));
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains(weft_api::DEFAULT_SOCKET), "{help}");
        assert!(help.contains(DEFAULT_PIN_DIR), "{help}");
    }

    #[test]
    fn explicit_paths_without_a_lab_are_used_as_given() {
        let args = ["--socket", "/tmp/a.sock", "--pin-dir", "/sys/fs/bpf/x"];
        let nodes = resolve_with(&parse(&args).expect("parses"), no_lab, "host1").expect("node");
        assert_eq!(nodes[0].socket, Path::new("/tmp/a.sock"));
        assert_eq!(nodes[0].pin_dir, Path::new("/sys/fs/bpf/x"));
        assert_eq!(nodes[0].netns, None);
    }

    #[test]
    fn a_lab_resolves_every_node_or_the_one_named() {
        let nodes = resolved(&["--lab", "t"]).expect("nodes");
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["vps1", "vps2"]);
        let vps2 = &resolved(&["--lab", "t", "--node", "vps2"]).expect("node")[0];
        assert_eq!(
            vps2,
            &Node {
                name: "vps2".into(),
                socket: runtime::agent_socket("t", "vps2"),
                pin_dir: "/sys/fs/bpf/weft/t/vps2".into(),
                netns: Some("t-vps2".into()),
            }
        );
    }

    #[test]
    fn explicit_paths_win_over_the_lab_for_one_node() {
        let node =
            &resolved(&["--lab", "t", "--node", "vps1", "--pin-dir", "/p"]).expect("node")[0];
        assert_eq!(node.pin_dir, Path::new("/p"));
        assert_eq!(node.socket, runtime::agent_socket("t", "vps1"));
        assert_eq!(node.netns.as_deref(), Some("t-vps1"));
        let node = &resolved(&["--lab", "t", "--node", "vps1", "--socket", "/s"]).expect("node")[0];
        assert_eq!(node.socket, Path::new("/s"));
        assert_eq!(node.pin_dir, Path::new("/sys/fs/bpf/weft/t/vps1"));
    }

    #[test]
    fn explicit_paths_for_several_lab_nodes_are_refused() {
        let err = resolved(&["--lab", "t", "--socket", "/s"]).expect_err("ambiguous");
        assert!(
            err.to_string().contains("add --node") && err.to_string().contains("vps1, vps2"),
            "{err}"
        );
    }

    #[test]
    fn a_node_needs_a_lab_and_must_be_one_of_its_nodes() {
        let err = parse(&["--node", "vps1"]).expect_err("no lab");
        assert!(err.to_string().contains("--lab"), "{err}");
        let err = resolve_with(
            &Address {
                node: Some("vps1".into()),
                ..Address::default()
            },
            no_lab,
            "h",
        )
        .expect_err("no lab");
        assert!(err.to_string().contains("name the lab with --lab"), "{err}");
        let err = resolved(&["--lab", "t", "--node", "vps9"]).expect_err("unknown");
        assert!(
            err.to_string().contains("no node vps9") && err.to_string().contains("vps1, vps2"),
            "{err}"
        );
    }

    #[test]
    fn a_lab_that_is_not_up_says_so() {
        let err = resolve_with(
            &parse(&["--lab", "gone"]).expect("parses"),
            |name| anyhow::bail!("lab {name} is not up"),
            "h",
        )
        .expect_err("not up");
        assert_eq!(err.to_string(), "lab gone is not up");
    }

    #[test]
    fn missing_paths_get_errors_naming_the_flag() {
        let node = Node {
            name: "host1".into(),
            socket: "/nonexistent/weft.sock".into(),
            pin_dir: "/nonexistent/pins".into(),
            netns: None,
        };
        let err = node.pins().expect_err("absent");
        assert_eq!(
            err.to_string(),
            "no pin directory /nonexistent/pins on node host1: is weft-agent running? (--pin-dir)"
        );
        assert_eq!(
            no_agent(&node.socket),
            "no agent at /nonexistent/weft.sock: is weft-agent running? (--socket)"
        );
        assert_eq!(node.run(|| 7).expect("in place"), 7);
    }

    #[test]
    fn the_cluster_config_comes_from_the_file_given_else_the_defaults() {
        let dir = std::env::temp_dir().join(format!("weft-cli-address-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("values.yaml");
        fs::write(
            &file,
            "ipam: {operator: {clusterPoolIPv4PodCIDRList: [10.9.0.0/16]}}\n",
        )
        .expect("write");
        let given = cluster_config(&Address::default(), Some(&file)).expect("config");
        let _ = fs::remove_dir_all(&dir);
        let pool =
            |c: &ClusterConfig| c.ipam.operator.cluster_pool_ipv4_pod_cidr_list[0].to_string();
        assert_eq!(pool(&given), "10.9.0.0/16");
        let default = cluster_config(&Address::default(), None).expect("defaults");
        assert_eq!(pool(&default), pool(&ClusterConfig::default()));
    }
}
