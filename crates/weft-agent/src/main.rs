//! `weft-agent`: the node agent. Started inside the node's network namespace.

use std::{fs, net::Ipv4Addr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;
use weft_agent::{
    agent::{Agent, Settings},
    log,
    net::SystemNet,
    server::{ApiSocket, run, stop_on_signals},
    socket_lb::SocketLbSite,
    source::{ManifestsSource, Source},
};
use weft_datapath::{Datapath as _, NodeDatapath};
use weft_model::{ClusterConfig, Store, lb_capacity::LbCapacity};

#[derive(Debug, Parser)]
#[command(name = "weft-agent", about = "Weft node agent")]
struct Args {
    /// This node's name.
    #[arg(long)]
    node: String,
    /// Directory of cluster manifests (shared by the agents of the cluster).
    #[arg(long)]
    manifests: PathBuf,
    /// Directory for this node's saved pod allocations.
    #[arg(long)]
    state_dir: PathBuf,
    /// bpffs directory of this node's pinned maps and links.
    #[arg(long)]
    pin_dir: PathBuf,
    /// The local API socket.
    #[arg(long, default_value = weft_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[arg(long, default_value = "eth0")]
    external_device: String,
    /// Helm-style values (Cilium keys).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Defaults to the external device's first IPv4 address.
    #[arg(long)]
    underlay_ip: Option<Ipv4Addr>,
    /// The cgroup2 directory whose sockets socket LB translates (the node's, holding its pods'
    /// processes). Defaults to the agent's own cgroup; never the root of the hierarchy.
    #[arg(long)]
    socket_lb_cgroup: Option<PathBuf>,
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<ClusterConfig> {
    let Some(path) = path else {
        return Ok(ClusterConfig::default());
    };
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    ClusterConfig::from_yaml(&text).with_context(|| format!("parsing {}", path.display()))
}

/// With socket LB disabled the agent attaches it nowhere (and detaches what an earlier agent
/// attached), so it needs no cgroup and may run in any.
fn socket_lb_site(
    cluster: &ClusterConfig,
    cgroup: Option<PathBuf>,
) -> anyhow::Result<SocketLbSite> {
    if !cluster.socket_lb.enabled {
        return Ok(SocketLbSite::default());
    }
    SocketLbSite::of_this_process(cgroup)
        .context("socketLB.enabled: pass --socket-lb-cgroup or disable socket LB")
}

fn main_inner(args: Args) -> anyhow::Result<()> {
    let stop = stop_on_signals()?;
    let cluster = load_config(args.config.as_ref())?;
    fs::create_dir_all(&args.manifests)
        .with_context(|| format!("creating {}", args.manifests.display()))?;
    let mut source = ManifestsSource::new(args.manifests.clone());
    let store = match source.poll() {
        Ok(store) => store.unwrap_or_default(),
        Err(e) => {
            log!("starting with an empty cluster state: {e:#}");
            Store::default()
        }
    };
    let lb_map_max = cluster.bpf.lb_map_max.get();
    let asked = LbCapacity::for_lb_map_max(lb_map_max);
    let datapath = NodeDatapath::open_sized(&args.pin_dir, lb_map_max, &asked)
        .with_context(|| format!("opening the datapath in {}", args.pin_dir.display()))?;
    let capacity = datapath.lb_capacity()?;
    if capacity != asked {
        log!(
            "the pinned load-balancer maps keep the sizes they were created with ({capacity:?}), \
             not those of bpf.lbMapMax {lb_map_max}: remove the node's pins to resize them"
        );
    }
    let settings = Settings {
        node: args.node,
        manifests_dir: args.manifests,
        state_dir: args.state_dir,
        external_device: args.external_device,
        underlay_ip: args.underlay_ip,
        socket_lb: socket_lb_site(&cluster, args.socket_lb_cgroup)?,
        cluster,
    };
    let mut agent = Agent::start(settings, datapath, Box::new(SystemNet), store)?;
    let socket = ApiSocket::bind(&args.socket)?;
    run(&mut agent, &mut source, &socket, stop);
    Ok(())
}

fn main() -> ExitCode {
    match main_inner(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
