//! L1 (no root): every command and error path of the plugin against fakes of the system and the
//! agent, compared with tests/golden/*.json (`{"exit": code, "stdout": JSON or null}`), plus the
//! side effects each case must (not) leave. `WEFT_UPDATE_GOLDEN=1` rewrites the files.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use common::fakes::{FakeAgent, FakeHost, NODE_NETNS, route};
use serde_json::{Value, json};
use weft_api::{Attachment, PodRef, Request};
use weft_cni::{Outcome, host_ifname, run};

const NETNS: &str = "/var/run/netns/cni-0f1e2d3c";
const CID: &str = "4f6c2a9e8b1d";
const SOCKET: &str = "/run/weft/test-agent.sock";

fn conf(version: &str) -> Value {
    json!({ "cniVersion": version, "name": "weft", "type": "weft-cni", "agentSocket": SOCKET })
}

fn env(command: &str) -> BTreeMap<String, String> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", CID),
        ("CNI_NETNS", NETNS),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn without(mut vars: BTreeMap<String, String>, name: &str) -> BTreeMap<String, String> {
    vars.remove(name);
    vars
}

fn with(mut vars: BTreeMap<String, String>, name: &str, value: &str) -> BTreeMap<String, String> {
    vars.insert(name.to_string(), value.to_string());
    vars
}

fn invoke(
    vars: &BTreeMap<String, String>,
    stdin: &Value,
    host: &FakeHost,
    agent: &FakeAgent,
) -> Outcome {
    run(vars, stdin.to_string().as_bytes(), host, agent)
}

fn attachment() -> Attachment {
    Attachment {
        container_id: CID.into(),
        ifname: "eth0".into(),
    }
}

fn lxc() -> String {
    host_ifname(&attachment())
}

/// Compares the outcome with tests/golden/<name>.json.
fn golden(name: &str, outcome: &Outcome) {
    let stdout = if outcome.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&outcome.stdout).expect("stdout is JSON")
    };
    assert!(
        outcome.stdout.is_empty() || outcome.stdout.ends_with(b"\n"),
        "stdout ends with a newline"
    );
    let actual = json!({ "exit": outcome.exit_code, "stdout": stdout });
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.json"));
    if std::env::var_os("WEFT_UPDATE_GOLDEN").is_some() {
        let text = serde_json::to_string_pretty(&actual).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (WEFT_UPDATE_GOLDEN=1 writes it)", path.display()));
    let expected: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        actual,
        expected,
        "{name}: got\n{}",
        serde_json::to_string_pretty(&actual).unwrap()
    );
}

/// A host and agent after a successful ADD.
fn added() -> (FakeHost, FakeAgent, Value) {
    let host = FakeHost::with_netns(NETNS);
    let agent = FakeAgent::default();
    let out = invoke(&env("ADD"), &conf("1.1.0"), &host, &agent);
    assert_eq!(out.exit_code, 0);
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    agent.calls.borrow_mut().clear();
    (host, agent, result)
}

fn with_prev(mut config: Value, prev: &Value) -> Value {
    config["prevResult"] = prev.clone();
    config
}

// ----------------------------------------------------------------------------------- VERSION

#[test]
fn version_echoes_the_input_version() {
    let out = invoke(
        &env("VERSION"),
        &json!({"cniVersion": "1.0.0"}),
        &FakeHost::default(),
        &FakeAgent::default(),
    );
    golden("version", &out);
}

#[test]
fn version_without_stdin_answers_in_1_1_0() {
    let agent = FakeAgent::default();
    let out = run(&env("VERSION"), b"", &FakeHost::default(), &agent);
    golden("version_no_stdin", &out);
    assert!(agent.ops().is_empty());
}

// --------------------------------------------------------------------------------------- ADD

#[test]
fn add_wires_the_pod_and_registers_it() {
    let host = FakeHost::with_netns(NETNS);
    let agent = FakeAgent::default();
    let out = invoke(&env("ADD"), &conf("1.1.0"), &host, &agent);
    golden("add_ok", &out);

    assert_eq!(agent.ops(), ["allocate", "register"]);
    assert_eq!(agent.sockets.borrow()[0], PathBuf::from(SOCKET));
    let calls = agent.calls.borrow();
    assert_eq!(
        calls[0],
        Request::Allocate {
            attachment: attachment(),
            pod: Some(PodRef {
                namespace: "default".into(),
                name: "web-0".into()
            }),
        }
    );
    let pod = host.state.borrow().pods[NETNS].0["eth0"].clone();
    assert_eq!(
        calls[1],
        Request::Register {
            attachment: attachment(),
            host_ifname: lxc(),
            mac: pod.mac.clone(),
            address: Ipv4Addr::new(10, 42, 1, 5),
        }
    );
    assert!(pod.up && pod.mtu == 1450 && pod.ipv4 == [(Ipv4Addr::new(10, 42, 1, 5), 32)]);
    let state = host.state.borrow();
    assert!(state.node_links[&lxc()].up);
    assert!(
        state
            .node_routes
            .contains(&route("10.42.1.5/32", None, &lxc()))
    );
    let gw = Ipv4Addr::new(10, 42, 1, 1);
    assert!(
        state.pods[NETNS]
            .1
            .contains(&route("default", Some(gw), "eth0"))
    );
    assert!(
        state.pods[NETNS]
            .1
            .contains(&route("10.42.1.1/32", None, "eth0"))
    );
}

#[test]
fn host_veth_names_are_cilium_style() {
    // `printf 4f6c2a9e8b1d | sha256sum` = 5269d0c7b03cd0c8...
    let name = lxc();
    assert_eq!(name, "lxc5269d0c7b03");
    let other = host_ifname(&Attachment {
        container_id: CID.into(),
        ifname: "net1".into(),
    });
    assert_ne!(
        name, other,
        "two interfaces of one container get two host veths"
    );
}

#[test]
fn add_in_a_chain_appends_to_prev_result() {
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{ "name": "dummy0", "mac": "02:aa:bb:cc:dd:ee" }],
        "ips": [{ "address": "192.0.2.10/24", "interface": 0 }],
        "dns": { "nameservers": ["10.43.0.10"] }
    });
    let host = FakeHost::with_netns(NETNS);
    let agent = FakeAgent::default();
    let out = invoke(&env("ADD"), &with_prev(conf("1.0.0"), &prev), &host, &agent);
    golden("add_prev_result", &out);
}

#[test]
fn add_in_0_4_0_marks_ips_with_their_version() {
    let host = FakeHost::with_netns(NETNS);
    let out = invoke(&env("ADD"), &conf("0.4.0"), &host, &FakeAgent::default());
    golden("add_v0_4_0", &out);
}

#[test]
fn add_without_required_variables_is_refused() {
    for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        let host = FakeHost::with_netns(NETNS);
        let agent = FakeAgent::default();
        let out = invoke(&without(env("ADD"), var), &conf("1.1.0"), &host, &agent);
        golden(&format!("add_missing_{}", var.to_lowercase()), &out);
        assert!(agent.ops().is_empty(), "{var}: nothing asked of the agent");
    }
}

#[test]
fn add_without_a_command_or_with_a_bad_one_is_refused() {
    let host = FakeHost::with_netns(NETNS);
    let agent = FakeAgent::default();
    golden(
        "missing_command",
        &invoke(
            &without(env("ADD"), "CNI_COMMAND"),
            &conf("1.1.0"),
            &host,
            &agent,
        ),
    );
    golden(
        "unknown_command",
        &invoke(&env("UPDATE"), &conf("1.1.0"), &host, &agent),
    );
    assert!(agent.ops().is_empty());
}

#[test]
fn add_with_malformed_cni_args_is_refused() {
    let agent = FakeAgent::default();
    let vars = with(env("ADD"), "CNI_ARGS", "K8S_POD_NAMESPACE=default;garbage");
    golden(
        "add_bad_cni_args",
        &invoke(&vars, &conf("1.1.0"), &FakeHost::with_netns(NETNS), &agent),
    );
    assert!(agent.ops().is_empty());
}

#[test]
fn add_with_a_bad_container_id_is_refused() {
    let vars = with(env("ADD"), "CNI_CONTAINERID", "../etc");
    golden(
        "add_bad_container_id",
        &invoke(
            &vars,
            &conf("1.1.0"),
            &FakeHost::with_netns(NETNS),
            &FakeAgent::default(),
        ),
    );
}

#[test]
fn add_with_undecodable_stdin_is_refused() {
    let agent = FakeAgent::default();
    let out = run(
        &env("ADD"),
        b"{\"cniVersion\": \"1.1.0\", \"name\": ",
        &FakeHost::with_netns(NETNS),
        &agent,
    );
    golden("add_bad_json", &out);
    assert!(agent.ops().is_empty());
}

#[test]
fn add_with_an_unsupported_version_is_refused() {
    let agent = FakeAgent::default();
    let out = invoke(
        &env("ADD"),
        &conf("0.2.0"),
        &FakeHost::with_netns(NETNS),
        &agent,
    );
    golden("add_unsupported_version", &out);
    assert!(agent.ops().is_empty());
}

#[test]
fn add_with_an_ipam_section_is_an_unsupported_field() {
    let mut config = conf("1.1.0");
    config["ipam"] = json!({"type": "host-local"});
    let out = invoke(
        &env("ADD"),
        &config,
        &FakeHost::with_netns(NETNS),
        &FakeAgent::default(),
    );
    golden("add_ipam_unsupported", &out);
}

#[test]
fn add_without_a_network_name_is_invalid() {
    let config = json!({"cniVersion": "1.1.0", "type": "weft-cni"});
    let out = invoke(
        &env("ADD"),
        &config,
        &FakeHost::with_netns(NETNS),
        &FakeAgent::default(),
    );
    golden("add_missing_name", &out);
}

#[test]
fn add_into_a_missing_netns_is_refused_before_allocating() {
    let agent = FakeAgent::default();
    let out = invoke(&env("ADD"), &conf("1.1.0"), &FakeHost::default(), &agent);
    golden("add_missing_netns", &out);
    assert!(agent.ops().is_empty());
}

#[test]
fn add_into_the_plugins_own_netns_is_refused() {
    let agent = FakeAgent::default();
    let vars = with(env("ADD"), "CNI_NETNS", NODE_NETNS);
    golden(
        "add_own_netns",
        &invoke(&vars, &conf("1.1.0"), &FakeHost::default(), &agent),
    );
    assert!(agent.ops().is_empty());
}

#[test]
fn add_over_an_existing_interface_is_refused() {
    let host = FakeHost::with_netns(NETNS);
    host.state
        .borrow_mut()
        .pods
        .get_mut(NETNS)
        .unwrap()
        .0
        .insert(
            "eth0".into(),
            common::fakes::link("eth0", "02:11:11:11:11:11", 1500),
        );
    let agent = FakeAgent::default();
    golden(
        "add_interface_exists",
        &invoke(&env("ADD"), &conf("1.1.0"), &host, &agent),
    );
    assert!(agent.ops().is_empty());
    assert_eq!(
        host.pod_link_names(NETNS),
        ["eth0", "lo"],
        "the existing eth0 is left alone"
    );
}

#[test]
fn add_with_the_agent_unreachable_is_try_again_later() {
    let host = FakeHost::with_netns(NETNS);
    let agent = FakeAgent::unreachable();
    golden(
        "add_agent_unreachable",
        &invoke(&env("ADD"), &conf("1.1.0"), &host, &agent),
    );
    assert!(host.node_link_names().is_empty());
    assert_eq!(host.pod_link_names(NETNS), ["lo"]);
}

#[test]
fn add_passes_on_the_agents_error_code() {
    let host = FakeHost::with_netns(NETNS);
    let agent = FakeAgent::refusing("allocate", 120, "address pool 10.42.1.0/24 exhausted");
    golden(
        "add_agent_error",
        &invoke(&env("ADD"), &conf("1.1.0"), &host, &agent),
    );
    assert_eq!(agent.ops(), ["allocate"]);
    assert!(host.node_link_names().is_empty());
}

#[test]
fn add_rolls_back_when_the_veth_cannot_be_created() {
    let host = FakeHost::with_netns(NETNS).failing("create_veth");
    let agent = FakeAgent::default();
    golden(
        "add_veth_fails",
        &invoke(&env("ADD"), &conf("1.1.0"), &host, &agent),
    );
    assert_eq!(agent.ops(), ["allocate", "release"]);
    assert!(agent.records.borrow().is_empty(), "address released");
    assert!(host.node_link_names().is_empty());
    assert_eq!(host.pod_link_names(NETNS), ["lo"]);
}

#[test]
fn add_rolls_back_when_the_pod_side_cannot_be_configured() {
    let host = FakeHost::with_netns(NETNS).failing("configure_pod");
    let agent = FakeAgent::default();
    golden(
        "add_configure_pod_fails",
        &invoke(&env("ADD"), &conf("1.1.0"), &host, &agent),
    );
    assert_eq!(agent.ops(), ["allocate", "release"]);
    assert!(host.node_link_names().is_empty());
    assert_eq!(host.pod_link_names(NETNS), ["lo"]);
}

#[test]
fn add_rolls_back_when_the_agent_refuses_to_register() {
    let host = FakeHost::with_netns(NETNS);
    let agent = FakeAgent::refusing("register", 11, "datapath busy");
    golden(
        "add_register_fails",
        &invoke(&env("ADD"), &conf("1.1.0"), &host, &agent),
    );
    assert_eq!(agent.ops(), ["allocate", "register", "release"]);
    assert!(agent.records.borrow().is_empty(), "address released");
    assert!(host.node_link_names().is_empty(), "veth deleted");
    assert_eq!(host.pod_link_names(NETNS), ["lo"]);
    assert!(host.state.borrow().node_routes.is_empty());
}

#[test]
fn add_rollback_deletes_the_pair_from_the_pod_end_when_the_host_end_resists() {
    let host = FakeHost::with_netns(NETNS)
        .failing("configure_node")
        .failing("delete_node_link");
    let agent = FakeAgent::default();
    golden(
        "add_rollback_via_pod_end",
        &invoke(&env("ADD"), &conf("1.1.0"), &host, &agent),
    );
    // The host end could not be deleted, so the rollback deleted the pod end (the pair with it).
    assert!(host.node_link_names().is_empty());
    assert_eq!(host.pod_link_names(NETNS), ["lo"]);
    assert_eq!(agent.ops(), ["allocate", "release"]);
}

#[test]
fn add_replaces_a_leftover_host_veth_of_the_same_container() {
    let host = FakeHost::with_netns(NETNS);
    host.state.borrow_mut().node_links.insert(
        lxc(),
        common::fakes::link(&lxc(), "02:99:99:99:99:99", 1500),
    );
    let out = invoke(&env("ADD"), &conf("1.1.0"), &host, &FakeAgent::default());
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    let link = host.state.borrow().node_links[&lxc()].clone();
    assert_eq!(
        (link.mtu, link.up),
        (1450, true),
        "a fresh veth replaced the leftover"
    );
}

#[test]
fn add_reports_what_the_rollback_could_not_undo() {
    let host = FakeHost::with_netns(NETNS).failing("configure_pod");
    let agent = FakeAgent::refusing("release", 11, "agent shutting down");
    golden(
        "add_rollback_incomplete",
        &invoke(&env("ADD"), &conf("1.1.0"), &host, &agent),
    );
    assert_eq!(agent.ops(), ["allocate", "release"]);
    assert!(host.node_link_names().is_empty());
}

// --------------------------------------------------------------------------------------- DEL

#[test]
fn del_releases_and_removes_the_veth() {
    let (host, agent, result) = added();
    let out = invoke(
        &env("DEL"),
        &with_prev(conf("1.1.0"), &result),
        &host,
        &agent,
    );
    golden("del_ok", &out);
    assert_eq!(agent.ops(), ["release"]);
    assert!(agent.records.borrow().is_empty());
    assert!(host.node_link_names().is_empty());
    assert!(host.state.borrow().node_routes.is_empty());
    assert_eq!(host.pod_link_names(NETNS), ["lo"]);
}

#[test]
fn del_succeeds_when_nothing_exists() {
    let host = FakeHost::default(); // not even the netns
    let agent = FakeAgent::default();
    let vars = without(env("DEL"), "CNI_NETNS");
    golden("del_nothing", &invoke(&vars, &conf("1.1.0"), &host, &agent));
    golden("del_nothing", &invoke(&vars, &conf("1.1.0"), &host, &agent));
    assert_eq!(agent.ops(), ["release", "release"]);
}

#[test]
fn del_with_the_agent_unreachable_is_try_again_later_but_still_tears_down() {
    let (host, _, _) = added();
    let agent = FakeAgent::unreachable();
    golden(
        "del_agent_unreachable",
        &invoke(&env("DEL"), &conf("1.1.0"), &host, &agent),
    );
    assert!(host.node_link_names().is_empty());
}

#[test]
fn del_reports_a_veth_it_cannot_delete() {
    let (mut host, agent, _) = added();
    host.fail.insert("delete_node_link");
    golden(
        "del_teardown_fails",
        &invoke(&env("DEL"), &conf("1.1.0"), &host, &agent),
    );
}

// ------------------------------------------------------------------------------------- CHECK

#[test]
fn check_accepts_what_add_made() {
    let (host, agent, result) = added();
    let out = invoke(
        &env("CHECK"),
        &with_prev(conf("1.1.0"), &result),
        &host,
        &agent,
    );
    golden("check_ok", &out);
    assert_eq!(agent.ops(), ["get"]);
}

#[test]
fn check_needs_prev_result() {
    let (host, agent, _) = added();
    golden(
        "check_missing_prev_result",
        &invoke(&env("CHECK"), &conf("1.1.0"), &host, &agent),
    );
}

#[test]
fn check_finds_a_missing_pod_interface() {
    let (host, agent, result) = added();
    let lxc = lxc();
    host.state
        .borrow_mut()
        .pods
        .get_mut(NETNS)
        .unwrap()
        .0
        .remove("eth0");
    host.state.borrow_mut().peers.remove(&lxc);
    let out = invoke(
        &env("CHECK"),
        &with_prev(conf("1.1.0"), &result),
        &host,
        &agent,
    );
    golden("check_interface_missing", &out);
}

#[test]
fn check_finds_a_wrong_mtu_and_a_missing_host_route() {
    let (host, agent, result) = added();
    let config = with_prev(conf("1.1.0"), &result);
    host.state
        .borrow_mut()
        .pods
        .get_mut(NETNS)
        .unwrap()
        .0
        .get_mut("eth0")
        .unwrap()
        .mtu = 1500;
    golden(
        "check_wrong_mtu",
        &invoke(&env("CHECK"), &config, &host, &agent),
    );
    host.state
        .borrow_mut()
        .pods
        .get_mut(NETNS)
        .unwrap()
        .0
        .get_mut("eth0")
        .unwrap()
        .mtu = 1450;
    host.state.borrow_mut().node_routes.clear();
    golden(
        "check_host_route_missing",
        &invoke(&env("CHECK"), &config, &host, &agent),
    );
}

#[test]
fn check_passes_on_an_unknown_attachment() {
    let (host, agent, result) = added();
    agent.records.borrow_mut().clear();
    let out = invoke(
        &env("CHECK"),
        &with_prev(conf("1.1.0"), &result),
        &host,
        &agent,
    );
    golden("check_unknown_to_agent", &out);
}

#[test]
fn check_is_not_part_of_0_3_1() {
    let (host, agent, result) = added();
    let out = invoke(
        &env("CHECK"),
        &with_prev(conf("0.3.1"), &result),
        &host,
        &agent,
    );
    golden("check_v0_3_1", &out);
    assert!(agent.ops().is_empty());
}

// ------------------------------------------------------------------------------------ STATUS

fn status_env() -> BTreeMap<String, String> {
    [("CNI_COMMAND", "STATUS")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn status_is_ok_when_the_agent_is_ready() {
    let agent = FakeAgent::default();
    golden(
        "status_ok",
        &invoke(&status_env(), &conf("1.1.0"), &FakeHost::default(), &agent),
    );
    assert_eq!(agent.ops(), ["status"]);
}

#[test]
fn status_is_50_when_the_agent_is_unreachable() {
    let out = invoke(
        &status_env(),
        &conf("1.1.0"),
        &FakeHost::default(),
        &FakeAgent::unreachable(),
    );
    golden("status_unreachable", &out);
}

#[test]
fn status_is_51_when_the_agent_is_not_ready() {
    let agent = FakeAgent {
        ready: false,
        ..FakeAgent::default()
    };
    golden(
        "status_not_ready",
        &invoke(&status_env(), &conf("1.1.0"), &FakeHost::default(), &agent),
    );
}

#[test]
fn status_is_not_part_of_1_0_0() {
    let out = invoke(
        &status_env(),
        &conf("1.0.0"),
        &FakeHost::default(),
        &FakeAgent::default(),
    );
    golden("status_v1_0_0", &out);
}

// ---------------------------------------------------------------------------------------- GC

fn gc_env() -> BTreeMap<String, String> {
    [("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn gc_keeps_valid_attachments_and_removes_the_others_veths() {
    let (host, agent, _) = added();
    let other_netns = "/var/run/netns/cni-keep";
    host.add_netns(other_netns);
    let keep_env = with(
        with(env("ADD"), "CNI_CONTAINERID", "keepme"),
        "CNI_NETNS",
        other_netns,
    );
    assert_eq!(
        invoke(&keep_env, &conf("1.1.0"), &host, &agent).exit_code,
        0
    );
    agent.calls.borrow_mut().clear();

    let mut config = conf("1.1.0");
    config["cni.dev/valid-attachments"] = json!([{ "containerID": "keepme", "ifname": "eth0" }]);
    golden("gc_ok", &invoke(&gc_env(), &config, &host, &agent));

    let keep = host_ifname(&Attachment {
        container_id: "keepme".into(),
        ifname: "eth0".into(),
    });
    assert_eq!(host.node_link_names(), [keep]);
    assert_eq!(host.pod_link_names(NETNS), ["lo"]);
    match &agent.calls.borrow()[..] {
        [Request::Gc { keep }] => assert_eq!(keep[0].container_id, "keepme"),
        other => panic!("expected one Gc, got {other:?}"),
    }
}

#[test]
fn gc_without_the_list_of_valid_attachments_is_refused() {
    let (host, agent, _) = added();
    golden(
        "gc_missing_valid_attachments",
        &invoke(&gc_env(), &conf("1.1.0"), &host, &agent),
    );
    assert!(agent.ops().is_empty(), "nothing released");
    assert_eq!(host.node_link_names(), [lxc()]);
}

#[test]
fn gc_without_cni_path_is_refused() {
    let mut config = conf("1.1.0");
    config["cni.dev/valid-attachments"] = json!([]);
    let vars = without(gc_env(), "CNI_PATH");
    golden(
        "gc_missing_cni_path",
        &invoke(&vars, &config, &FakeHost::default(), &FakeAgent::default()),
    );
}

#[test]
fn gc_with_the_agent_unreachable_is_try_again_later() {
    let mut config = conf("1.1.0");
    config["cni.dev/valid-attachments"] = json!([]);
    let out = invoke(
        &gc_env(),
        &config,
        &FakeHost::default(),
        &FakeAgent::unreachable(),
    );
    golden("gc_agent_unreachable", &out);
}
