//! The desired set of program attachments of a node, as a function of its local endpoints, and
//! the difference to what is attached now.

use std::collections::BTreeSet;

use weft_common::Hook;

use crate::Acceleration;

/// A local endpoint as the datapath sees it: the host side of its veth pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub host_ifname: String,
}

/// One program attached at one hook of one interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attachment {
    pub ifname: String,
    pub hook: Hook,
}

/// What to change to go from the current attachments to the desired ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachmentChanges {
    pub attach: Vec<Attachment>,
    pub detach: Vec<Attachment>,
}

impl AttachmentChanges {
    pub fn is_empty(&self) -> bool {
        self.attach.is_empty() && self.detach.is_empty()
    }
}

/// The node's device towards the underlay, and whether `xdp_entry` is wanted on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalDevice {
    pub ifname: String,
    pub acceleration: Acceleration,
}

impl ExternalDevice {
    pub fn new(ifname: &str, acceleration: Acceleration) -> ExternalDevice {
        ExternalDevice {
            ifname: ifname.to_string(),
            acceleration,
        }
    }

    fn hooks(&self, xdp: bool) -> impl Iterator<Item = Attachment> + '_ {
        let xdp = xdp.then_some(Hook::Xdp);
        [Hook::FromNetdev, Hook::ToNetdev]
            .into_iter()
            .chain(xdp)
            .map(|hook| Attachment {
                ifname: self.ifname.clone(),
                hook,
            })
    }
}

/// The external device carries `from_netdev` and `to_netdev`, and `xdp_entry` when
/// acceleration is on; every endpoint's host-side veth carries `from_container` on ingress and
/// `to_container` on egress.
pub fn desired_attachments(
    external: &ExternalDevice,
    endpoints: &[Endpoint],
) -> BTreeSet<Attachment> {
    let veths = endpoints.iter().flat_map(|ep| {
        [Hook::FromContainer, Hook::ToContainer].map(|hook| Attachment {
            ifname: ep.host_ifname.clone(),
            hook,
        })
    });
    external
        .hooks(external.acceleration.wants_xdp())
        .chain(veths)
        .collect()
}

/// What the node cannot run without: a best-effort XDP program that the device refused is not
/// among them.
pub fn required_attachments(external: &ExternalDevice) -> BTreeSet<Attachment> {
    external
        .hooks(external.acceleration.requires_xdp())
        .collect()
}

pub fn attachment_changes(
    desired: &BTreeSet<Attachment>,
    current: &BTreeSet<Attachment>,
) -> AttachmentChanges {
    AttachmentChanges {
        attach: desired.difference(current).cloned().collect(),
        detach: current.difference(desired).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(name: &str) -> Endpoint {
        Endpoint {
            name: name.into(),
            host_ifname: format!("lxc{name}"),
        }
    }

    fn att(ifname: &str, hook: Hook) -> Attachment {
        Attachment {
            ifname: ifname.into(),
            hook,
        }
    }

    fn eth0(acceleration: Acceleration) -> ExternalDevice {
        ExternalDevice::new("eth0", acceleration)
    }

    #[test]
    fn each_endpoint_gets_both_veth_programs_and_the_device_all_three() {
        let d = desired_attachments(&eth0(Acceleration::Native), &[ep("a"), ep("b")]);
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![
                att("eth0", Hook::FromNetdev),
                att("eth0", Hook::ToNetdev),
                att("eth0", Hook::Xdp),
                att("lxca", Hook::FromContainer),
                att("lxca", Hook::ToContainer),
                att("lxcb", Hook::FromContainer),
                att("lxcb", Hook::ToContainer),
            ]
        );
    }

    #[test]
    fn xdp_is_wanted_only_with_acceleration_and_required_only_when_native() {
        let hooks = |set: BTreeSet<Attachment>| set.into_iter().map(|a| a.hook).collect::<Vec<_>>();
        let off = eth0(Acceleration::Disabled);
        assert_eq!(
            hooks(desired_attachments(&off, &[])),
            [Hook::FromNetdev, Hook::ToNetdev]
        );
        assert_eq!(
            hooks(required_attachments(&off)),
            [Hook::FromNetdev, Hook::ToNetdev]
        );
        let best = eth0(Acceleration::BestEffort);
        assert!(desired_attachments(&best, &[]).contains(&att("eth0", Hook::Xdp)));
        assert!(!required_attachments(&best).contains(&att("eth0", Hook::Xdp)));
        assert!(
            required_attachments(&eth0(Acceleration::Native)).contains(&att("eth0", Hook::Xdp))
        );
    }

    #[test]
    fn changes_touch_only_what_differs() {
        let dev = eth0(Acceleration::Disabled);
        let current = desired_attachments(&dev, &[ep("a"), ep("b")]);
        let desired = desired_attachments(&dev, &[ep("b"), ep("c")]);
        let changes = attachment_changes(&desired, &current);
        assert_eq!(
            changes.attach,
            vec![
                att("lxcc", Hook::FromContainer),
                att("lxcc", Hook::ToContainer)
            ]
        );
        assert_eq!(
            changes.detach,
            vec![
                att("lxca", Hook::FromContainer),
                att("lxca", Hook::ToContainer)
            ]
        );
        assert!(attachment_changes(&desired, &desired).is_empty());
    }
}
