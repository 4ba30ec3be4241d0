//! An in-memory [`Datapath`] for tests without root.

use std::collections::BTreeSet;

use anyhow::bail;
use weft_common::DatapathConfig;
use weft_model::desired::Attachment;

use crate::Datapath;

/// Behaves like the kernel where it matters to callers: attaching to an interface that does not
/// exist fails, attaching twice fails, detaching what is not attached fails.
#[derive(Debug, Default)]
pub struct FakeDatapath {
    pub interfaces: BTreeSet<String>,
    pub attached: BTreeSet<Attachment>,
    pub config: DatapathConfig,
    /// Every call that changed state, in order, for assertions.
    pub log: Vec<String>,
}

impl FakeDatapath {
    pub fn with_interfaces<'a>(names: impl IntoIterator<Item = &'a str>) -> FakeDatapath {
        FakeDatapath {
            interfaces: names.into_iter().map(str::to_string).collect(),
            ..FakeDatapath::default()
        }
    }
}

impl Datapath for FakeDatapath {
    fn attach(&mut self, attachment: &Attachment) -> anyhow::Result<()> {
        if !self.interfaces.contains(&attachment.ifname) {
            bail!("no interface {}", attachment.ifname);
        }
        if !self.attached.insert(attachment.clone()) {
            bail!(
                "{} already has {}",
                attachment.ifname,
                attachment.hook.name()
            );
        }
        self.log.push(format!(
            "attach {} {}",
            attachment.hook.name(),
            attachment.ifname
        ));
        Ok(())
    }

    fn detach(&mut self, attachment: &Attachment) -> anyhow::Result<()> {
        if !self.attached.remove(attachment) {
            bail!("{} has no {}", attachment.ifname, attachment.hook.name());
        }
        self.log.push(format!(
            "detach {} {}",
            attachment.hook.name(),
            attachment.ifname
        ));
        Ok(())
    }

    fn attachments(&self) -> anyhow::Result<BTreeSet<Attachment>> {
        Ok(self.attached.clone())
    }

    fn set_config(&mut self, config: DatapathConfig) -> anyhow::Result<()> {
        self.config = config;
        self.log.push(format!("config flags={:#x}", config.flags));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use weft_model::desired::Endpoint;

    use super::*;
    use crate::reconcile_attachments;

    fn ep(name: &str) -> Endpoint {
        Endpoint {
            name: name.into(),
            host_ifname: format!("lxc{name}"),
        }
    }

    #[test]
    fn reconcile_attaches_both_programs_per_endpoint_then_is_a_no_op() {
        let mut dp = FakeDatapath::with_interfaces(["eth0", "lxca", "lxcb"]);
        let changes =
            reconcile_attachments(&mut dp, "eth0", &[ep("a"), ep("b")]).expect("reconciles");
        assert_eq!(changes.attach.len(), 5);
        assert_eq!(
            dp.log,
            [
                "attach xdp eth0",
                "attach from-container lxca",
                "attach to-container lxca",
                "attach from-container lxcb",
                "attach to-container lxcb"
            ]
        );
        let again =
            reconcile_attachments(&mut dp, "eth0", &[ep("a"), ep("b")]).expect("reconciles");
        assert!(again.is_empty());
        assert_eq!(dp.log.len(), 5, "a second pass changes nothing");
    }

    #[test]
    fn reconcile_detaches_only_removed_endpoints() {
        let mut dp = FakeDatapath::with_interfaces(["eth0", "lxca", "lxcb"]);
        reconcile_attachments(&mut dp, "eth0", &[ep("a"), ep("b")]).expect("reconciles");
        dp.log.clear();
        reconcile_attachments(&mut dp, "eth0", &[ep("b")]).expect("reconciles");
        assert_eq!(
            dp.log,
            ["detach from-container lxca", "detach to-container lxca"]
        );
    }

    #[test]
    fn a_failed_attach_is_reported_with_the_interface_and_leaves_others_applied() {
        let mut dp = FakeDatapath::with_interfaces(["eth0", "lxca"]);
        let err = reconcile_attachments(&mut dp, "eth0", &[ep("a"), ep("zz")])
            .expect_err("lxczz is missing");
        assert!(format!("{err:#}").contains("lxczz"), "{err:#}");
        assert_eq!(dp.attached.len(), 3, "eth0's and lxca's attachments stay");
        // Level-triggered: once the interface exists, the next pass completes the work.
        dp.interfaces.insert("lxczz".into());
        let changes =
            reconcile_attachments(&mut dp, "eth0", &[ep("a"), ep("zz")]).expect("reconciles");
        assert_eq!(changes.attach.len(), 2);
    }
}
