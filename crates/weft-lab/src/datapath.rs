//! Weft's datapath on the lab's nodes: each node's programs are loaded with their maps pinned in
//! the node's pin directory and attached to its pods' host-side veths from inside the node's
//! namespace. The links are pinned too, so the datapath stays in place after the CLI exits and
//! `down` (which removes the pin directory) takes it away.

use std::collections::BTreeMap;

use anyhow::Context as _;
use weft_common::{CONFIG_TRACE_FLAG, MetricsKey, MetricsValue};
use weft_datapath::{
    DatapathMaps, NodeDatapath,
    events::{self, EventView},
    node::{attached_programs, pinned_attachments},
    reconcile_attachments,
};
use weft_model::{
    Acceleration,
    desired::{Endpoint, ExternalDevice},
};

use crate::{LabSpec, NodeSpec, Topology, down, netns::run_in, topology::ETH0, up};

/// The node's device towards the underlay, where `xdp_entry` runs.
pub const EXTERNAL_DEVICE: &str = ETH0;

/// The hand-wired lab's external device: its self-test drives traffic through `xdp_entry`, so
/// acceleration is on.
pub fn external_device() -> ExternalDevice {
    ExternalDevice::new(EXTERNAL_DEVICE, Acceleration::Native)
}

/// The node's local endpoints as the datapath sees them.
pub fn endpoints(node: &NodeSpec) -> Vec<Endpoint> {
    node.pods
        .iter()
        .map(|pod| Endpoint {
            name: pod.name.clone(),
            host_ifname: pod.host_ifname.clone(),
        })
        .collect()
}

/// Builds the lab and installs the datapath on every node; on failure nothing is left behind.
pub fn start(spec: &LabSpec) -> anyhow::Result<Topology> {
    let topology = up(spec)?;
    if let Err(e) = install(&topology) {
        let _ = down(&topology.name);
        return Err(e);
    }
    Ok(topology)
}

/// Loads and attaches the datapath of every node (idempotent: a second run changes nothing).
pub fn install(topology: &Topology) -> anyhow::Result<()> {
    for node in &topology.nodes {
        run_in(&node.netns, || -> anyhow::Result<()> {
            let mut datapath = NodeDatapath::open(&node.pin_dir)?;
            reconcile_attachments(&mut datapath, &external_device(), &endpoints(node))?
                .into_result()?;
            Ok(())
        })?
        .with_context(|| format!("installing the datapath on {}", node.name))?;
    }
    Ok(())
}

/// Turns per-packet trace events on or off on every node.
pub fn set_trace(topology: &Topology, on: bool) -> anyhow::Result<()> {
    for node in &topology.nodes {
        let mut maps = DatapathMaps::from_pins(&node.pin_dir)?;
        let mut config = maps.config()?;
        config.flags = if on {
            config.flags | CONFIG_TRACE_FLAG
        } else {
            config.flags & !CONFIG_TRACE_FLAG
        };
        maps.set_config(config)
            .with_context(|| format!("configuring {}", node.name))?;
    }
    Ok(())
}

/// One program attachment as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttachmentView {
    pub ifname: String,
    pub hook: String,
    /// Programs the kernel runs at that hook (tcx query), in order.
    pub programs: Vec<String>,
}

/// What a node's datapath looks like from outside.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub node: String,
    pub attachments: Vec<AttachmentView>,
    pub metrics: BTreeMap<MetricsKey, MetricsValue>,
}

pub fn inspect(node: &NodeSpec) -> anyhow::Result<NodeView> {
    let pinned = pinned_attachments(&node.pin_dir)?;
    let attachments = run_in(&node.netns, || -> anyhow::Result<Vec<AttachmentView>> {
        pinned
            .iter()
            .map(|a| {
                Ok(AttachmentView {
                    ifname: a.ifname.clone(),
                    hook: a.hook.name().to_string(),
                    programs: attached_programs(&a.ifname, a.hook)?,
                })
            })
            .collect()
    })??;
    Ok(NodeView {
        node: node.name.clone(),
        attachments,
        metrics: DatapathMaps::from_pins(&node.pin_dir)?.metrics()?,
    })
}

/// Takes the node's pending events, with interface names resolved in the node's namespace.
pub fn drain_events(node: &NodeSpec) -> anyhow::Result<Vec<EventView>> {
    run_in(&node.netns, || {
        events::drain_pinned(&node.name, &node.pin_dir)
    })?
}

/// Counter difference per key, for "what did this traffic do".
pub fn metrics_delta(
    before: &BTreeMap<MetricsKey, MetricsValue>,
    after: &BTreeMap<MetricsKey, MetricsValue>,
) -> BTreeMap<MetricsKey, MetricsValue> {
    after
        .iter()
        .filter_map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or_default();
            let d = MetricsValue {
                packets: a.packets.saturating_sub(b.packets),
                bytes: a.bytes.saturating_sub(b.bytes),
            };
            (d.packets != 0).then_some((*k, d))
        })
        .collect()
}
