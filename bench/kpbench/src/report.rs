//! `bench/REPORT.md` from the results directory: one table per measure, Weft's ratio to each
//! kube-proxy mode and each stack's ratio to its own direct (no service) path.

use std::{collections::BTreeSet, fmt::Write as _, fs, path::Path};

use anyhow::Context as _;
use serde_json::Value;

use crate::{
    results::{CountRun, Paths, StackRun},
    stats::median,
};

/// The stacks in the order of the tables; Weft first, the reference of every ratio.
pub const STACKS: [&str; 5] = [
    "weft",
    "weft-socklb",
    "iptables",
    "iptables-legacy",
    "nftables",
];

/// Everything a report is made of.
#[derive(Debug, Default)]
pub struct Inputs {
    pub runs: Vec<StackRun>,
    /// `run.json`: the machine and the knobs, written by bench/compare.
    pub run: Value,
    /// `testrun.jsonl`, one line per number of services.
    pub testrun: Vec<Value>,
    /// `northsouth.json`.
    pub northsouth: Value,
}

impl Inputs {
    pub fn read(dir: &Path) -> anyhow::Result<Inputs> {
        let mut inputs = Inputs::default();
        for stack in STACKS {
            let path = dir.join(format!("{stack}.json"));
            if path.is_file() {
                let text = fs::read_to_string(&path)?;
                inputs.runs.push(
                    serde_json::from_str(&text)
                        .with_context(|| format!("parsing {}", path.display()))?,
                );
            }
        }
        inputs.run = read_json(&dir.join("run.json"))?;
        inputs.northsouth = read_json(&dir.join("northsouth.json"))?;
        if let Ok(text) = fs::read_to_string(dir.join("testrun.jsonl")) {
            inputs.testrun = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()
                .context("parsing testrun.jsonl")?;
        }
        Ok(inputs)
    }

    fn run_of(&self, stack: &str) -> Option<&StackRun> {
        self.runs.iter().find(|r| r.stack == stack)
    }

    fn counts(&self) -> Vec<u32> {
        let set: BTreeSet<u32> = self
            .runs
            .iter()
            .flat_map(|r| r.counts.iter().map(|c| c.services))
            .collect();
        set.into_iter().collect()
    }

    fn stacks(&self) -> Vec<&str> {
        STACKS
            .into_iter()
            .filter(|s| self.run_of(s).is_some())
            .collect()
    }

    /// The Weft stacks of [`Inputs::stacks`].
    fn wefts(&self) -> Vec<&str> {
        self.stacks()
            .into_iter()
            .filter(|s| s.starts_with("weft"))
            .collect()
    }

    fn count_of(&self, stack: &str, services: u32) -> Option<&CountRun> {
        self.run_of(stack)
            .and_then(|r| r.counts.iter().find(|c| c.services == services))
    }

    fn value(&self, stack: &str, services: u32, get: &dyn Fn(&CountRun) -> f64) -> f64 {
        self.count_of(stack, services).map(get).unwrap_or(f64::NAN)
    }
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    match fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
        Err(_) => Ok(Value::Null),
    }
}

/// A figure with `digits` decimals, "—" when missing.
pub fn num(v: f64, digits: usize) -> String {
    if v.is_finite() {
        let text = format!("{v:.digits$}");
        group_thousands(&text)
    } else {
        "—".into()
    }
}

fn group_thousands(text: &str) -> String {
    let (sign, rest) = text.strip_prefix('-').map_or(("", text), |r| ("-", r));
    let (int, frac) = rest.split_once('.').map_or((rest, ""), |(i, f)| (i, f));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

/// `a / b`; "—" unless both are figures and `b` is positive and `a` not negative (the ratio of
/// a negative delta, such as memory the machine gave back or traffic following before the
/// change returned, says nothing).
pub fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && a >= 0.0 && b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "—".into()
    }
}

/// Reads one figure of one size's results.
pub type Getter<'a> = Box<dyn Fn(&CountRun) -> f64 + 'a>;

/// One measure: a row per (number of services, variant), a column per stack, then each Weft
/// stack / each kube-proxy mode.
pub struct Measure<'a> {
    pub title: &'a str,
    pub unit: &'a str,
    /// What a ratio above 1 means, said once under the table.
    pub reading: &'a str,
    pub digits: usize,
    pub rows: Vec<(&'a str, Getter<'a>)>,
}

pub fn table(out: &mut String, inputs: &Inputs, m: &Measure) {
    let stacks = inputs.stacks();
    let (wefts, modes): (Vec<&str>, Vec<&str>) =
        stacks.iter().copied().partition(|s| s.starts_with("weft"));
    let pairs: Vec<(&str, &str)> = wefts
        .iter()
        .flat_map(|w| modes.iter().map(move |m| (*w, *m)))
        .collect();
    let _ = writeln!(out, "\n### {}\n", m.title);
    let mut head = format!(
        "| services | {} |",
        if m.rows.len() > 1 { "of" } else { "" }
    );
    for s in &stacks {
        let _ = write!(head, " {s} ({}) |", m.unit);
    }
    for (w, m) in &pairs {
        let _ = write!(head, " {w} / {m} |");
    }
    let _ = writeln!(out, "{head}");
    let _ = writeln!(out, "|{}", " --- |".repeat(2 + stacks.len() + pairs.len()));
    for n in inputs.counts() {
        for (label, get) in &m.rows {
            let mut row = format!("| {} | {label} |", num(f64::from(n), 0));
            for s in &stacks {
                let _ = write!(row, " {} |", num(inputs.value(s, n, get), m.digits));
            }
            for (w, m) in &pairs {
                let (w, m) = (inputs.value(w, n, get), inputs.value(m, n, get));
                let _ = write!(row, " {} |", ratio(w, m));
            }
            let _ = writeln!(out, "{row}");
        }
    }
    let _ = writeln!(out, "\n{}", m.reading);
}

/// Service path against the direct path (the limit), per stack: the medians over the repeats
/// and service / direct.
pub fn limit_table(
    out: &mut String,
    inputs: &Inputs,
    title: &str,
    get: fn(&Paths) -> &Vec<f64>,
    digits: usize,
) {
    let stacks = inputs.stacks();
    let _ = writeln!(out, "\n{title}\n");
    let mut head = String::from("| services |");
    for s in &stacks {
        let _ = write!(head, " {s} service | {s} direct | {s} service / direct |");
    }
    let _ = writeln!(out, "{head}");
    let _ = writeln!(out, "|{}", " --- |".repeat(1 + 3 * stacks.len()));
    for n in inputs.counts() {
        let mut row = format!("| {} |", num(f64::from(n), 0));
        for s in &stacks {
            let service = inputs.value(s, n, &|c| median(get(&c.service)));
            let direct = inputs.value(s, n, &|c| median(get(&c.direct)));
            let _ = write!(
                row,
                " {} | {} | {} |",
                num(service, digits),
                num(direct, digits),
                ratio(service, direct)
            );
        }
        let _ = writeln!(out, "{row}");
    }
}

pub fn render(inputs: &Inputs) -> String {
    let mut out = String::new();
    header(&mut out, inputs);
    data_path(&mut out, inputs);
    control_path(&mut out, inputs);
    memory(&mut out, inputs);
    testrun(&mut out, inputs);
    out
}

fn header(out: &mut String, inputs: &Inputs) {
    let r = &inputs.run;
    let s = |k: &str| {
        r[k].as_str()
            .map(String::from)
            .unwrap_or_else(|| r[k].to_string())
    };
    let _ = writeln!(
        out,
        "## Machine and run\n\n{} CPUs ({}), {} GiB, kernel {}. Load average before: {}; after: {}; \
         {} network namespaces of others on the machine at the start. The whole run took {} s \
         (`bench/compare` started {}). Knobs: {}.",
        s("cpus"),
        s("cpu_model"),
        s("mem_gib"),
        s("kernel"),
        s("load_before"),
        s("load_after"),
        s("other_netns"),
        s("seconds"),
        s("started"),
        s("knobs")
    );
    for run in &inputs.runs {
        let _ = writeln!(
            out,
            "- {}: lab `{}`, {:.0} s",
            run.stack, run.lab, run.seconds
        );
    }
}

fn data_path(out: &mut String, inputs: &Inputs) {
    let _ = writeln!(out, "\n## Data path");
    table(
        out,
        inputs,
        &Measure {
            title: "TCP connect latency, p50 (µs): first and last service",
            unit: "µs",
            reading: "Lower is better; Weft / mode below 1 means Weft connects faster.",
            digits: 1,
            rows: vec![
                ("first", Box::new(|c: &CountRun| c.connect_first.p50_us)),
                ("last", Box::new(|c: &CountRun| c.connect_last.p50_us)),
            ],
        },
    );
    table(
        out,
        inputs,
        &Measure {
            title: "TCP connect latency, p90 (µs): first and last service",
            unit: "µs",
            reading: "Lower is better.",
            digits: 1,
            rows: vec![
                ("first", Box::new(|c: &CountRun| c.connect_first.p90_us)),
                ("last", Box::new(|c: &CountRun| c.connect_last.p90_us)),
            ],
        },
    );
    table(
        out,
        inputs,
        &Measure {
            title: "TCP connects that timed out (1 s), of the connects above",
            unit: "count",
            reading: "A timed-out connect is a lost SYN (retransmitted only after 1 s); it is left out of \
                      the percentiles above.",
            digits: 0,
            rows: vec![
                (
                    "first",
                    Box::new(|c: &CountRun| c.connect_first.timed_out as f64),
                ),
                (
                    "last",
                    Box::new(|c: &CountRun| c.connect_last.timed_out as f64),
                ),
            ],
        },
    );
    balanced_where(out, inputs);
    let path_rows = [
        (
            "Request/response round trip, p50 (µs), `weft-netbench rr`",
            "µs",
            "Lower is better.",
            1,
            (|p: &Paths| &p.rr_p50_us) as fn(&Paths) -> &Vec<f64>,
        ),
        (
            "New connections per second, `weft-netbench crr`",
            "conn/s",
            "Higher is better; Weft / mode above 1 means Weft opens more connections a second.",
            0,
            |p: &Paths| &p.crr_per_s,
        ),
        (
            "Throughput through a service (Gbit/s), iperf3, one stream",
            "Gbit/s",
            "Higher is better.",
            2,
            |p: &Paths| &p.tput_gbps,
        ),
    ];
    for (title, unit, reading, digits, get) in path_rows {
        table(
            out,
            inputs,
            &Measure {
                title,
                unit,
                reading,
                digits,
                rows: vec![(
                    "service",
                    Box::new(move |c: &CountRun| median(get(&c.service))),
                )],
            },
        );
        limit_table(
            out,
            inputs,
            "Against the limit (client pod straight to the backend pod, no service, same lab; medians over the repeats):",
            get,
            digits,
        );
    }
}

fn control_path(out: &mut String, inputs: &Inputs) {
    let _ = writeln!(out, "\n## Control path");
    table(
        out,
        inputs,
        &Measure {
            title: "Time to program the services (ms)",
            unit: "ms",
            reading: "Lower is better. Weft: `weft lab apply` of the services added since the previous size (its \
                  objects written to the manifests directory) until both agents logged the new frontend count. \
                  kube-proxy: a full sync of all N services (rules generated from the model's Services and \
                  EndpointSlices, then the loader), both nodes at once, the slower counted.",
            digits: 0,
            rows: vec![("total", Box::new(|c: &CountRun| c.program.total_ms))],
        },
    );
    let stacks = inputs.stacks();
    let _ = writeln!(
        out,
        "\nIts parts (client node): Weft apply command / agents after it; kube-proxy generation / loader, and the rules and bytes loaded:\n"
    );
    let _ = writeln!(
        out,
        "| services | stack | added | part 1 ms | part 2 ms | rules | bytes |\n| --- | --- | --- | --- | --- | --- | --- |"
    );
    for n in inputs.counts() {
        for s in &stacks {
            if let Some(c) = inputs.count_of(s, n) {
                let p = &c.program;
                let _ = writeln!(
                    out,
                    "| {} | {s} | {} | {} | {} | {} | {} |",
                    num(f64::from(n), 0),
                    num(f64::from(p.added), 0),
                    num(p.prepare_ms, 0),
                    num(p.apply_ms, 0),
                    num(p.rules as f64, 0),
                    num(p.bytes as f64, 0)
                );
            }
        }
    }
    table(
        out,
        inputs,
        &Measure {
            title: "From changing one endpoint to traffic following it (ms)",
            unit: "ms",
            reading: "Lower is better. The last service's endpoint `c` is replaced by pod `a`; a probe in the client pod, \
                  started before the change (it has reached the service once) and let go as the change starts, \
                  connects every millisecond until `a` answers. Weft: from `weft lab apply` of the slice; \
                  kube-proxy: from the start of the client node's partial sync (top-level chains whole, the \
                  changed service's own chains, as kube-proxy syncs after a changed EndpointSlice). \"the change \
                  itself\": Weft's `weft lab apply` (the lab playing the API server, which kube-proxy's figure \
                  does not include), kube-proxy's sync; \"after the change returned\": from there until `a` \
                  answered (Weft: the agents noticing and writing the maps); negative when traffic followed \
                  before the change returned (kube-proxy's rules take effect when the loader commits, before \
                  its process has exited).",
            digits: 0,
            rows: vec![
                ("follow", Box::new(|c: &CountRun| c.follow.ms)),
                (
                    "the change itself",
                    Box::new(|c: &CountRun| c.follow.change_ms),
                ),
                (
                    "after the change returned",
                    Box::new(|c: &CountRun| c.follow.ms - c.follow.change_ms),
                ),
            ],
        },
    );
}

fn memory(out: &mut String, inputs: &Inputs) {
    let _ = writeln!(out, "\n## Memory of the datapath state");
    table(
        out,
        inputs,
        &Measure {
            title: "Kernel memory taken by programming (kB): Slab + VmallocUsed + Percpu delta",
            unit: "kB",
            reading: "Across the programming step of each size (so per step, not cumulative), whole machine; the \
                  idle delta below is the same counters over an interval as long right after, i.e. the noise.",
            digits: 0,
            rows: vec![
                (
                    "step",
                    Box::new(|c: &CountRun| c.memory.kernel_delta_kb as f64),
                ),
                (
                    "idle",
                    Box::new(|c: &CountRun| c.memory.idle_delta_kb as f64),
                ),
            ],
        },
    );
    let _ = writeln!(
        out,
        "\nWeft's maps pinned on the client node (`bytes_memlock`, `bpftool -j -f map show`) and its agent's RSS:\n\n| services | stack | maps | bytes_memlock (MiB) | agent RSS (MiB) |\n| --- | --- | --- | --- | --- |"
    );
    for n in inputs.counts() {
        for s in inputs.wefts() {
            if let Some(c) = inputs.count_of(s, n) {
                let m = &c.memory;
                let _ = writeln!(
                    out,
                    "| {} | {s} | {} | {} | {} |",
                    num(f64::from(n), 0),
                    m.bpf_maps,
                    num(m.bpf_memlock_bytes as f64 / 1048576.0, 1),
                    num(m.agent_rss_kb as f64 / 1024.0, 1)
                );
            }
        }
    }
}

/// Where Weft balanced the client's connects: service conntrack entries (tc) or none (socket
/// LB), per Weft stack.
fn balanced_where(out: &mut String, inputs: &Inputs) {
    let wefts = inputs.wefts();
    if wefts.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nWeft's service conntrack entries of flows from the client pod, read right after the connects above: \
         one per recent connection balanced in tc; none when socket LB gave `connect()` the backend \
         (the bench checks both):\n"
    );
    let mut head = String::from("| services |");
    for s in &wefts {
        let _ = write!(head, " {s} |");
    }
    let _ = writeln!(out, "{head}\n|{}", " --- |".repeat(1 + wefts.len()));
    for n in inputs.counts() {
        let mut row = format!("| {} |", num(f64::from(n), 0));
        for s in &wefts {
            let flows = inputs.count_of(s, n).and_then(|c| c.client_service_flows);
            let _ = write!(row, " {} |", num(flows.map_or(f64::NAN, |f| f as f64), 0));
        }
        let _ = writeln!(out, "{row}");
    }
}

fn testrun(out: &mut String, inputs: &Inputs) {
    let _ = writeln!(
        out,
        "\n## BPF_PROG_TEST_RUN, ns per packet (`weft-lbbench testrun`, `northsouth`)\n"
    );
    let _ = writeln!(
        out,
        "| program | packet | services | median ns | p10 | p90 |\n| --- | --- | --- | --- | --- | --- |"
    );
    for line in &inputs.testrun {
        if let Some(kinds) = line["ns"].as_object() {
            for (kind, ns) in kinds {
                let _ = writeln!(
                    out,
                    "| from_container | {kind} | {} | {} | {} | {} |",
                    num(line["services"].as_f64().unwrap_or(f64::NAN), 0),
                    num(ns["median"].as_f64().unwrap_or(f64::NAN), 0),
                    num(ns["p10"].as_f64().unwrap_or(f64::NAN), 0),
                    num(ns["p90"].as_f64().unwrap_or(f64::NAN), 0)
                );
            }
        }
    }
    for kind in inputs.northsouth["kinds"].as_array().into_iter().flatten() {
        let label = [&kind["mode"], &kind["packet"]]
            .iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let ns = &kind["ns"];
        let _ = writeln!(
            out,
            "| {} | {label} | 2 | {} | {} | {} |",
            kind["program"].as_str().unwrap_or("?"),
            num(ns["median"].as_f64().unwrap_or(f64::NAN), 0),
            num(ns["p10"].as_f64().unwrap_or(f64::NAN), 0),
            num(ns["p90"].as_f64().unwrap_or(f64::NAN), 0)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Latency, Program};

    fn run(stack: &str, connect: f64, crr: f64) -> StackRun {
        StackRun {
            stack: stack.into(),
            lab: "x".into(),
            seconds: 1.0,
            counts: vec![CountRun {
                services: 1000,
                connect_first: Latency {
                    count: 1,
                    p50_us: connect,
                    p90_us: connect,
                    p99_us: connect,
                    timed_out: 0,
                },
                connect_last: Latency {
                    count: 1,
                    p50_us: connect * 2.0,
                    p90_us: connect,
                    p99_us: connect,
                    timed_out: 0,
                },
                service: Paths {
                    crr_per_s: vec![crr, crr * 3.0, crr * 2.0],
                    ..Paths::default()
                },
                direct: Paths {
                    crr_per_s: vec![crr * 4.0],
                    ..Paths::default()
                },
                program: Program {
                    total_ms: 5.0,
                    ..Program::default()
                },
                ..CountRun::default()
            }],
        }
    }

    #[test]
    fn numbers_and_ratios_format() {
        assert_eq!(num(1234567.891, 1), "1,234,567.9");
        assert_eq!(num(-1234.0, 0), "-1,234");
        assert_eq!(num(f64::NAN, 2), "—");
        assert_eq!(ratio(1.0, 4.0), "0.25");
        assert_eq!(ratio(1.0, 0.0), "—");
        assert_eq!(ratio(0.0, 4.0), "0.00");
        assert_eq!(ratio(-16.0, 49.0), "—");
        assert_eq!(ratio(49.0, -16.0), "—");
    }

    #[test]
    fn tables_compare_weft_with_each_mode_and_with_the_limit() {
        let inputs = Inputs {
            runs: vec![run("weft", 10.0, 100.0), run("nftables", 20.0, 50.0)],
            ..Inputs::default()
        };
        let text = render(&inputs);
        assert!(
            text.contains("| 1,000 | first | 10.0 | 20.0 | 0.50 |"),
            "{text}"
        );
        assert!(
            text.contains("| 1,000 | last | 20.0 | 40.0 | 0.50 |"),
            "{text}"
        );
        // crr: medians 200 and 100 -> Weft / nftables 2.00; service / direct 200 / 400.
        assert!(
            text.contains("| 1,000 | service | 200 | 100 | 2.00 |"),
            "{text}"
        );
        assert!(
            text.contains("| 1,000 | 200 | 400 | 0.50 | 100 | 200 | 0.50 |"),
            "{text}"
        );
        assert!(
            !text.contains("iptables-legacy"),
            "absent stacks have no column"
        );
    }

    #[test]
    fn each_weft_stack_has_its_ratio_to_each_mode() {
        let mut socklb = run("weft-socklb", 5.0, 400.0);
        socklb.counts[0].client_service_flows = Some(0);
        let mut weft = run("weft", 10.0, 100.0);
        weft.counts[0].client_service_flows = Some(2000);
        let inputs = Inputs {
            runs: vec![weft, socklb, run("nftables", 20.0, 50.0)],
            ..Inputs::default()
        };
        let text = render(&inputs);
        assert!(
            text.contains(
                "| services | of | weft (µs) | weft-socklb (µs) | nftables (µs) | weft / nftables | weft-socklb / nftables |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| 1,000 | first | 10.0 | 5.0 | 20.0 | 0.50 | 0.25 |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| services | weft | weft-socklb |\n| --- | --- | --- |\n| 1,000 | 2,000 | 0 |"
            ),
            "{text}"
        );
        assert!(text.contains("| 1,000 | weft-socklb | 0 |"), "{text}");
    }

    #[test]
    fn results_of_older_runs_still_read() {
        let old = r#"{"stack": "weft", "lab": "x", "seconds": 1.0, "counts": [{"services": 100,
            "program": {"added": 100, "prepare_ms": 1.0, "apply_ms": 1.0, "total_ms": 2.0,
            "rules": 0, "bytes": 0}, "memory": {"kernel_delta_kb": 0, "idle_delta_kb": 0,
            "bpf_memlock_bytes": 0, "bpf_maps": 0, "agent_rss_kb": 0},
            "connect_first": {"count": 1, "p50_us": 1.0, "p90_us": 1.0, "p99_us": 1.0},
            "connect_last": {"count": 1, "p50_us": 1.0, "p90_us": 1.0, "p99_us": 1.0},
            "service": {"rr_p50_us": [], "rr_p90_us": [], "crr_per_s": [], "tput_gbps": []},
            "direct": {"rr_p50_us": [], "rr_p90_us": [], "crr_per_s": [], "tput_gbps": []},
            "follow": {"ms": 1.0, "change_ms": 1.0, "stale": 0, "attempts": 1}}]}"#;
        let weft: StackRun = serde_json::from_str(old).expect("an older weft.json");
        assert_eq!(weft.counts[0].client_service_flows, None);
        let text = render(&Inputs {
            runs: vec![weft],
            ..Inputs::default()
        });
        assert!(!text.contains("weft-socklb"), "{text}");
        assert!(
            text.contains("| services | weft |\n| --- | --- |\n| 100 | — |"),
            "{text}"
        );
    }
}
