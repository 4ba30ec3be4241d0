//! What the agent does with N services, step by step, timed in this process: read the
//! manifests directory (one file per object, as `weft lab apply` writes it), parse it into a
//! Store, compute the LB state, assign ids, compute the maps' contents, write them to the
//! maps (of a BPF_PROG_TEST_RUN harness: real BPF maps, not pinned).

use std::{collections::BTreeMap, fs, path::Path, time::Instant};

use anyhow::Context as _;
use weft_datapath::testrun::TestHarness;
use weft_model::{
    ClusterConfig, Store,
    lb::{LbIds, assign_ids, lb_state},
    lb_maps::{LbMapContents, lb_map_contents},
};

use crate::{
    manifests::{filler_service, filler_slice},
    stats::ms,
};

/// Milliseconds of each step for `services` services, in order.
pub fn steps(services: u32, dir: &Path) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let mut out = Vec::new();
    let mut step = |name, start: Instant| out.push((name, ms(start.elapsed())));
    write_files(services, dir)?;
    let start = Instant::now();
    let files = read_files(dir)?;
    step("read manifests directory", start);
    let start = Instant::now();
    let store = Store::from_manifests(files.iter().map(|(n, t)| (n.as_str(), t.as_str())))
        .context("parsing the manifests")?;
    step("parse into a Store", start);
    let start = Instant::now();
    let state = lb_state(&store, "vps1", &ClusterConfig::default());
    step("lb_state", start);
    let start = Instant::now();
    let ids = assign_ids(&state, &LbIds::default())?;
    step("assign_ids", start);
    let start = Instant::now();
    let contents = lb_map_contents(&state, &ids);
    step("lb_map_contents", start);
    anyhow::ensure!(
        state.frontends.len() == services as usize,
        "{} frontends for {services} services",
        state.frontends.len()
    );
    let mut h = TestHarness::load()?;
    let start = Instant::now();
    write_maps(&mut h, &contents)?;
    step("write the BPF maps", start);
    Ok(out)
}

fn write_files(services: u32, dir: &Path) -> anyhow::Result<()> {
    for i in 0..services {
        fs::write(
            dir.join(format!("service-lbfill-{i}.yaml")),
            filler_service(i),
        )?;
        fs::write(dir.join(format!("slice-lbfill-{i}.yaml")), filler_slice(i))?;
    }
    Ok(())
}

fn read_files(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        files.insert(name, fs::read_to_string(entry.path())?);
    }
    Ok(files)
}

fn write_maps(h: &mut TestHarness, contents: &LbMapContents) -> anyhow::Result<()> {
    for (&id, &backend) in &contents.backends {
        h.lb.put_backend(id, backend)?;
    }
    for (&id, &revnat) in &contents.revnat {
        h.lb.set_revnat(id, revnat)?;
    }
    for (&key, &entry) in &contents.services {
        h.lb.put_service(key, entry)?;
    }
    Ok(())
}
