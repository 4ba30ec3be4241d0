"""The report of bench/services, from the JSON its measurements left in $RESULTS (markdown on
stdout). Every ratio reads the same way: 1.00 is parity, higher is better."""
import json
import os
import statistics

env = os.environ
RESULTS = env["RESULTS"]
REPEAT = int(env["REPEAT"])
COUNTS = [int(c) for c in env["SERVICE_COUNTS"].split()]
TARGET = 0.95


def jsonl(name):
    with open(f"{RESULTS}/{name}") as f:
        return [json.loads(line) for line in f if line.strip()]


def runs(measure, path, count):
    out = []
    for i in range(1, REPEAT + 1):
        with open(f"{RESULTS}/{measure}-{path}-{count}-{i}.json") as f:
            out.append(json.load(f))
    return out


MEASURES = [
    # (measure, title, heading, value of a run, format, higher is better)
    ("throughput", f"Throughput (iperf3 TCP, 1 stream, {env['DURATION']} s)", "Gbit/s",
     lambda r: r["end"]["sum_received"]["bits_per_second"] / 1e9, "{:.2f}", True),
    ("rr", f"Request/response latency (weft-netbench rr, {env['RR_DURATION']} s)", "p50 µs",
     lambda r: r["p50_us"], "{:.1f}", False),
    ("crr", f"New connections (weft-netbench crr, 1 at a time, {env['CRR_DURATION']} s)",
     "connections/s", lambda r: r["connections_per_second"], "{:.0f}", True),
]


def ratio(mine, reference, higher_is_better):
    return mine / reference if higher_is_better else reference / mine


def verdict(r):
    return f"{'met' if r >= TARGET else 'missed'} (>= {TARGET:.2f})"


def lab_tables():
    """One table per measure; returns the targets' verdicts."""
    verdicts = []
    for measure, title, heading, value, fmt, higher in MEASURES:
        med = {}
        print(f"### {title}\n")
        print(f"| services | direct {heading} | range | service {heading} | range "
              "| service / direct | target: within 5% |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for count in COUNTS:
            cells = []
            for path in ("direct", "service"):
                values = [value(r) for r in runs(measure, path, count)]
                med[path, count] = statistics.median(values)
                cells += [fmt.format(med[path, count]),
                          f"{fmt.format(min(values))}–{fmt.format(max(values))}"]
            r = ratio(med["service", count], med["direct", count], higher)
            verdicts.append((f"{measure}, {count:,} services: service within 5% of direct", r))
            print(f"| {count:,} | " + " | ".join(cells) + f" | {r:.2f} | {verdict(r)} |")
        print()
        flatness(measure, med, higher, verdicts)
    return verdicts


def flatness(measure, med, higher, verdicts):
    first, rest = COUNTS[0], COUNTS[1:]
    for count in rest:
        absolute = ratio(med["service", count], med["service", first], higher)
        relative = (ratio(med["service", count], med["direct", count], higher)
                    / ratio(med["service", first], med["direct", first], higher))
        verdicts.append((f"{measure}: service path flat from {first:,} to {count:,} services "
                         "(service/direct at N over at 1)", relative))
        print(f"Flatness, {count:,} against {first:,} services: service path "
              f"{absolute:.2f} in absolute terms, {relative:.2f} relative to direct in the "
              "same round.\n")


def testrun_table():
    rows = jsonl("testrun.jsonl")
    print(f"Each cell: median ns of one BPF_PROG_TEST_RUN (repeat 1, the kernel's own clock), "
          f"{env['TESTRUN_SAMPLES']} packets of each kind, the kinds taking turns; p10–p90 "
          "beside it.\n")
    print("| services | direct (no service) | service, first packet | service, established "
          "| established / direct | map load + fill ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        ns = row["ns"]
        cell = lambda k: f"{ns[k]['median']:.0f} ({ns[k]['p10']:.0f}–{ns[k]['p90']:.0f})"
        print(f"| {row['services']:,} | {cell('direct')} | {cell('service_first')} | "
              f"{cell('service_established')} | "
              f"{ns['service_established']['median'] / ns['direct']['median']:.2f} | "
              f"{row['load_and_fill_ms']:.0f} |")
    print()
    base = rows[0]["ns"]
    verdicts = []
    for row in rows[1:]:
        for kind in ("service_first", "service_established"):
            r = base[kind]["median"] / row["ns"][kind]["median"]
            verdicts.append((f"TEST_RUN {kind}: flat from {rows[0]['services']:,} to "
                             f"{row['services']:,} services", r))
    return verdicts


def maglev_table():
    rows = jsonl("maglev.jsonl")
    print(f"Median of {env['MAGLEV_REPEAT']} builds (min–max), ms, release build.\n")
    sizes = sorted({r["table_size"] for r in rows})
    backends = sorted({r["backends"] for r in rows})
    print("| backends | " + " | ".join(f"M = {s}" for s in sizes) + " |")
    print("| --- " * (len(sizes) + 1) + "|")
    for b in backends:
        cells = []
        for s in sizes:
            ms = next(r["ms"] for r in rows if r["table_size"] == s and r["backends"] == b)
            cells.append(f"{ms['median']:.2f} ({ms['min']:.2f}–{ms['max']:.2f})")
        print(f"| {b:,} | " + " | ".join(cells) + " |")
    print()


def apply_tables():
    print("| change | objects | `weft lab apply/delete` s | agent done after s | total s |")
    print("| --- | --- | --- | --- | --- |")
    for row in jsonl("apply.jsonl"):
        print(f"| {row['verb']} {row['from']:,} -> {row['to']:,} services | {row['objects']:,} "
              f"| {row['command_s']:.1f} | {row['agent_after_s']:.1f} | {row['total_s']:.1f} |")
    print()
    print("The agent's CPU use while nothing changes (every 300 ms it checks the manifests "
          "directory's modification time, every 5 s it lists the directory and resyncs the "
          f"maps), over {env['IDLE_SECONDS']} s:\n")
    print("| services | agent CPU % |")
    print("| --- | --- |")
    for row in jsonl("idle.jsonl"):
        print(f"| {row['services']:,} | {row['cpu_percent']:.0f} |")
    print()
    model = json.load(open(f"{RESULTS}/model.json"))
    print(f"The agent's steps for {model['services']:,} services, each timed once in one "
          "process (weft-lbbench model, release build; the lab's agent is a debug build):\n")
    print("| step | ms |")
    print("| --- | --- |")
    for step in model["steps"]:
        print(f"| {step['step']} | {step['ms']:.0f} |")
    print()


print("# Services inside the cluster: service path against direct, scale, programming\n")
print(f"{env['CPUS']} CPUs, kernel {env['KERNEL']}. Load average before: {env['LOAD_BEFORE']}; "
      f"after: {env['LOAD_AFTER']}; {env['OTHER_NETNS']} network namespaces of others on the "
      "machine at the start.\n")
print("## pod -> ClusterIP -> pod against pod -> pod (lab, one node)\n")
print(f"{REPEAT} runs of every measure on both paths at each number of services, direct and "
      "service taking turns; medians, the range of the runs beside them. The service path is "
      "tc's (`from_container`, socketLB off). "
      + (f"rr and crr pinned to CPU {env['PIN_CPU']}; iperf3 not pinned. " if env["PIN_CPU"]
         else "Nothing pinned. ")
      + "Ratios: throughput and connections/s service / direct, latency direct / service.\n")
verdicts = lab_tables()
print("## BPF_PROG_TEST_RUN, ns per packet of from_container\n")
verdicts += testrun_table()
print("## Time to apply services\n")
apply_tables()
print("## Maglev table build time\n")
maglev_table()
print("## Targets\n")
print("| target | ratio | verdict |")
print("| --- | --- | --- |")
for name, r in verdicts:
    print(f"| {name} | {r:.2f} | {verdict(r)} |")
print()
