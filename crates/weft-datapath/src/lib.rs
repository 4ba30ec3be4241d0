//! The user side of Weft's eBPF datapath: the embedded BPF object, loading it for a node with its
//! maps pinned in the node's pin directory, attaching programs with tcx and pinning the links so
//! the datapath outlives the process, reading counters and events, and running programs under
//! BPF_PROG_TEST_RUN.
//!
//! Everything that changes the kernel goes through the [`Datapath`] trait; [`FakeDatapath`]
//! implements it in memory so reconcile logic is tested without root.

pub mod events;
pub mod fake;
pub mod maps;
pub mod node;
pub mod object;
pub mod testrun;

use std::collections::BTreeSet;

use anyhow::Context as _;
pub use fake::FakeDatapath;
pub use maps::DatapathMaps;
pub use node::NodeDatapath;
use weft_common::DatapathConfig;
use weft_model::desired::{
    Attachment, AttachmentChanges, Endpoint, attachment_changes, desired_attachments,
};

/// The seam between Weft's logic and the kernel.
pub trait Datapath {
    /// Attaches the program of `attachment.hook` to `attachment.ifname`, durably.
    fn attach(&mut self, attachment: &Attachment) -> anyhow::Result<()>;
    /// Removes an attachment made by [`Datapath::attach`].
    fn detach(&mut self, attachment: &Attachment) -> anyhow::Result<()>;
    /// The attachments in place now.
    fn attachments(&self) -> anyhow::Result<BTreeSet<Attachment>>;
    fn set_config(&mut self, config: DatapathConfig) -> anyhow::Result<()>;
}

/// Brings the attachments of a node to what its external device and endpoints need: detaches
/// what is no longer wanted, attaches what is missing, touches nothing else. Returns what it
/// changed.
pub fn reconcile_attachments(
    datapath: &mut dyn Datapath,
    external_device: &str,
    endpoints: &[Endpoint],
) -> anyhow::Result<AttachmentChanges> {
    let current = datapath.attachments().context("listing attachments")?;
    let changes = attachment_changes(&desired_attachments(external_device, endpoints), &current);
    for attachment in &changes.detach {
        datapath.detach(attachment).with_context(|| {
            format!(
                "detaching {} from {}",
                attachment.hook.name(),
                attachment.ifname
            )
        })?;
    }
    for attachment in &changes.attach {
        datapath.attach(attachment).with_context(|| {
            format!(
                "attaching {} to {}",
                attachment.hook.name(),
                attachment.ifname
            )
        })?;
    }
    Ok(changes)
}
