//! The desired set of program attachments of a node, as a function of its local endpoints, and
//! the difference to what is attached now.

use std::collections::BTreeSet;

use weft_common::Hook;

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

/// The node's external device carries `xdp_entry`, `from_netdev` and `to_netdev`; every endpoint's host-side veth carries
/// `from_container` on ingress and `to_container` on egress.
pub fn desired_attachments(external_device: &str, endpoints: &[Endpoint]) -> BTreeSet<Attachment> {
    let external = [Hook::Xdp, Hook::FromNetdev, Hook::ToNetdev].map(|hook| Attachment {
        ifname: external_device.to_string(),
        hook,
    });
    let veths = endpoints.iter().flat_map(|ep| {
        [Hook::FromContainer, Hook::ToContainer].map(|hook| Attachment {
            ifname: ep.host_ifname.clone(),
            hook,
        })
    });
    external.into_iter().chain(veths).collect()
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

    #[test]
    fn each_endpoint_gets_both_veth_programs_and_the_device_all_three() {
        let d = desired_attachments("eth0", &[ep("a"), ep("b")]);
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
    fn changes_touch_only_what_differs() {
        let current = desired_attachments("eth0", &[ep("a"), ep("b")]);
        let desired = desired_attachments("eth0", &[ep("b"), ep("c")]);
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
