//! Socket LB attachments: the four cgroup sock_addr programs on one cgroup, each link pinned
//! in the node's pin directory as `links/socket-lb/<program>@<cgroup path, escaped>`, so that
//! the attachment outlives the agent and the next agent reads back which cgroup carries it.
//! The directory name has no `@`: the tcx link pins beside it never parse as it, nor it as one.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use weft_common::{Lb4SockKey, Lb4SockRevNat, maps as names, programs::SOCKET_LB};

use crate::{
    maps::pinned_map,
    node::{links_dir, unpin_link},
    object::program,
};

const DIR: &str = "socket-lb";

/// One pinned socket LB link.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SocketLbPin {
    program: String,
    cgroup: PathBuf,
}

fn pins_dir(pin_dir: &Path) -> PathBuf {
    links_dir(pin_dir).join(DIR)
}

/// bpffs refuses '/' and '.' in names; '%' escapes them and itself.
fn escape_cgroup(cgroup: &Path) -> anyhow::Result<String> {
    let text = cgroup
        .to_str()
        .with_context(|| format!("cgroup path {} is not UTF-8", cgroup.display()))?;
    Ok(text
        .chars()
        .map(|c| match c {
            '%' => "%25".to_string(),
            '/' => "%2F".to_string(),
            '.' => "%2E".to_string(),
            c => c.to_string(),
        })
        .collect())
}

fn unescape_cgroup(escaped: &str) -> Option<PathBuf> {
    let mut out = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some((before, after)) = rest.split_once('%') {
        out.push_str(before);
        let c = match after.get(..2)? {
            "25" => '%',
            "2F" => '/',
            "2E" => '.',
            _ => return None,
        };
        out.push(c);
        rest = &after[2..];
    }
    out.push_str(rest);
    Some(PathBuf::from(out))
}

fn pin_name(program: &str, cgroup: &Path) -> anyhow::Result<String> {
    Ok(format!("{program}@{}", escape_cgroup(cgroup)?))
}

fn parse_pin_name(name: &str) -> Option<SocketLbPin> {
    let (program, escaped) = name.split_once('@')?;
    SOCKET_LB.contains(&program).then_some(())?;
    Some(SocketLbPin {
        program: program.to_string(),
        cgroup: unescape_cgroup(escaped)?,
    })
}

/// Every entry of the pin directory: parsed, or `None` for a name that is not ours.
fn pinned(pin_dir: &Path) -> anyhow::Result<Vec<(PathBuf, Option<SocketLbPin>)>> {
    let dir = pins_dir(pin_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let parsed = entry.file_name().to_str().and_then(parse_pin_name);
        out.push((entry.path(), parsed));
    }
    Ok(out)
}

/// The cgroup socket LB is attached to: the one every socket LB program is pinned for.
/// `None` when none is, or only some are (an attach cut short; [`set_socket_lb`] completes it).
pub fn attached_cgroup(pin_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let pins: Vec<SocketLbPin> = pinned(pin_dir)?.into_iter().filter_map(|p| p.1).collect();
    Ok(complete_cgroup(&pins))
}

fn complete_cgroup(pins: &[SocketLbPin]) -> Option<PathBuf> {
    let cgroup = &pins.first()?.cgroup;
    let complete = SOCKET_LB.iter().all(|program| {
        pins.iter()
            .any(|p| p.program == *program && p.cgroup == *cgroup)
    });
    let single = pins.iter().all(|p| p.cgroup == *cgroup);
    (complete && single).then(|| cgroup.clone())
}

/// Attaches the socket LB programs of `ebpf` to `cgroup`, or detaches them with `None`.
/// Level-triggered: links on another cgroup and foreign pins are removed, missing links are
/// made, existing ones are kept (sockets never see a gap).
pub(crate) fn set_socket_lb(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    cgroup: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(cgroup) = cgroup
        && !cgroup.is_absolute()
    {
        bail!("the socket LB cgroup {} is not absolute", cgroup.display());
    }
    for (path, pin) in pinned(pin_dir)? {
        let wanted = pin.is_some_and(|p| Some(p.cgroup.as_path()) == cgroup);
        if !wanted {
            unpin_link(&path)?;
        }
    }
    let Some(cgroup) = cgroup else {
        return Ok(());
    };
    let dir = pins_dir(pin_dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let target =
        File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    for name in SOCKET_LB {
        let pin = dir.join(pin_name(name, cgroup)?);
        if pin.exists() {
            continue;
        }
        let prog = program::<CgroupSockAddr>(ebpf, name)?;
        let id = prog
            .attach(&target, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to cgroup {}", cgroup.display()))?;
        let link: FdLink = prog
            .take_link(id)?
            .try_into()
            .context("a cgroup link is an fd link")?;
        link.pin(&pin)
            .with_context(|| format!("pinning link {}", pin.display()))?;
    }
    Ok(())
}

/// The socket LB reverse translations (`weft_lb4_sock_revnat`) of a node.
pub fn sock_revnat(pin_dir: &Path) -> anyhow::Result<Vec<(Lb4SockKey, Lb4SockRevNat)>> {
    let map: HashMap<MapData, Lb4SockKey, Lb4SockRevNat> =
        HashMap::try_from(pinned_map(pin_dir, names::LB4_SOCK_REVNAT)?)
            .context(names::LB4_SOCK_REVNAT)?;
    map.iter()
        .map(|e| e.with_context(|| format!("reading {}", names::LB4_SOCK_REVNAT)))
        .collect()
}

/// SO_NETNS_COOKIE (Linux 5.14), not in the libc crate yet.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the calling thread's network namespace, as `bpf_get_netns_cookie` sees it.
pub fn current_netns_cookie() -> anyhow::Result<u64> {
    use std::os::fd::AsRawFd as _;

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("creating a socket to read the netns cookie")?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for writes of the sizes given.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt SO_NETNS_COOKIE");
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use weft_common::programs::{SOCK_CONNECT4, SOCK_RECVMSG4};

    use super::*;
    use crate::{Datapath, FakeDatapath};

    #[test]
    fn pin_names_round_trip_any_cgroup_path() {
        for cgroup in [
            "/sys/fs/cgroup/unified/weft-ab12/vps1",
            "/odd%2F/na.me@x",
            "/",
        ] {
            let name = pin_name(SOCK_CONNECT4, Path::new(cgroup)).unwrap();
            assert!(!name.contains('/') && !name.contains('.'), "{name}");
            assert_eq!(
                parse_pin_name(&name),
                Some(SocketLbPin {
                    program: SOCK_CONNECT4.into(),
                    cgroup: cgroup.into()
                })
            );
        }
    }

    #[test]
    fn the_netns_cookie_is_stable_and_not_zero() {
        let cookie = current_netns_cookie().unwrap();
        assert_ne!(cookie, 0);
        assert_eq!(current_netns_cookie().unwrap(), cookie);
    }

    #[test]
    fn foreign_or_damaged_pin_names_are_not_ours() {
        assert_eq!(parse_pin_name("from-container@lxc1"), None);
        assert_eq!(parse_pin_name("sock_connect4"), None);
        assert_eq!(parse_pin_name("sock_connect4@%2"), None);
        assert_eq!(parse_pin_name("sock_connect4@%41"), None);
    }

    fn pin(program: &str, cgroup: &str) -> SocketLbPin {
        SocketLbPin {
            program: program.into(),
            cgroup: cgroup.into(),
        }
    }

    #[test]
    fn a_cgroup_is_attached_only_with_every_program_and_no_other_cgroup() {
        let all: Vec<SocketLbPin> = SOCKET_LB.iter().map(|p| pin(p, "/cg/a")).collect();
        assert_eq!(complete_cgroup(&all), Some(PathBuf::from("/cg/a")));
        assert_eq!(complete_cgroup(&all[..3]), None, "one link missing");
        let mut mixed = all.clone();
        mixed.push(pin(SOCK_RECVMSG4, "/cg/b"));
        assert_eq!(complete_cgroup(&mixed), None, "half moved");
        assert_eq!(complete_cgroup(&[]), None);
    }

    #[test]
    fn the_fake_attaches_moves_and_detaches_socket_lb() {
        let mut dp = FakeDatapath::default();
        let a = Path::new("/cg/a");
        let b = Path::new("/cg/b");
        assert!(
            dp.set_socket_lb(Some(a)).is_err(),
            "no such cgroup in the fake"
        );
        dp.cgroups.extend([a.to_path_buf(), b.to_path_buf()]);
        assert_eq!(dp.socket_lb().unwrap(), None);
        dp.set_socket_lb(Some(a)).unwrap();
        dp.set_socket_lb(Some(a)).unwrap();
        assert_eq!(dp.socket_lb().unwrap().as_deref(), Some(a));
        dp.set_socket_lb(Some(b)).unwrap();
        dp.set_socket_lb(None).unwrap();
        dp.set_socket_lb(None).unwrap();
        assert_eq!(dp.socket_lb().unwrap(), None);
        assert_eq!(
            dp.log,
            [
                "attach socket-lb /cg/a",
                "detach socket-lb /cg/a",
                "attach socket-lb /cg/b",
                "detach socket-lb /cg/b",
            ]
        );
    }
}
