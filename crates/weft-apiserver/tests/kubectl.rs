//! The real kubectl against the server over a real socket, inside a network namespace of its
//! own (named with the lab's unique prefix, removed however the test ends): `get ns`,
//! `get pods -A -o wide`, `apply -f` of a Service, `get svc`. Needs root (for the namespace)
//! and kubectl (skipped with a printed reason otherwise).

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use nix::{mount::MsFlags, sched::CloneFlags};
use serde_json::json;
use weft_apiserver::{ApiServer, ServerConfig, kubeconfig_yaml};
use weft_lab::testing::{running_as_root, unique_lab_name};

/// A named network namespace with its loopback up, and a scratch directory; both removed on
/// drop.
struct Scratch {
    netns: String,
    dir: PathBuf,
}

impl Scratch {
    fn create(name: &str) -> Scratch {
        let scratch = Scratch {
            netns: name.to_string(),
            dir: std::env::temp_dir().join(name),
        };
        std::fs::create_dir_all(&scratch.dir).unwrap();
        let path = weft_lab::netns::netns_path(name);
        std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).unwrap();
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            File::create(&path).unwrap();
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap();
        })
        .join()
        .unwrap();
        weft_lab::netns::run_in(name, loopback_up).unwrap();
        scratch
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let path = weft_lab::netns::netns_path(&self.netns);
        let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ip link set lo up`, with the ioctl (no `ip` process).
fn loopback_up() {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    // SAFETY: ifreq is plain data; the name is NUL-terminated within its 16 bytes.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq passed.
    unsafe {
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request), 0);
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut request), 0);
    }
}

fn kubectl_path() -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin/kubectl");
    if fixed.exists() {
        return Some(fixed.to_path_buf());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("kubectl"))
        .find(|p| p.exists())
}

/// kubectl in the namespace, with the scratch kubeconfig and discovery cache.
fn kubectl(kubectl: &Path, scratch: &Scratch, args: &[&str]) -> (bool, String, String) {
    let output = Command::new("nsenter")
        .arg(format!(
            "--net={}",
            weft_lab::netns::netns_path(&scratch.netns).display()
        ))
        .arg(kubectl)
        .arg(format!(
            "--kubeconfig={}",
            scratch.dir.join("kubeconfig").display()
        ))
        .arg(format!(
            "--cache-dir={}",
            scratch.dir.join("cache").display()
        ))
        .arg("--request-timeout=20s")
        .args(args)
        .env("HOME", &scratch.dir)
        .output()
        .expect("running nsenter");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stdout, stderr)
}

#[test]
fn kubectl_gets_namespaces_pods_wide_and_applies_a_service() {
    if !running_as_root("kubectl_gets_namespaces_pods_wide_and_applies_a_service") {
        return;
    }
    let Some(kubectl_bin) = kubectl_path() else {
        println!(
            "SKIPPED (no kubectl in /usr/bin or PATH): kubectl_gets_namespaces_pods_wide_and_applies_a_service"
        );
        return;
    };
    let scratch = Scratch::create(&unique_lab_name("kctl"));
    let listener: TcpListener =
        weft_lab::netns::run_in(&scratch.netns, || TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    std::fs::write(
        scratch.dir.join("kubeconfig"),
        kubeconfig_yaml(&format!("http://{address}"), "weft-lab", "weft-lab"),
    )
    .unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = ApiServer::new(ServerConfig {
        advertise_address: Some(address),
        ..ServerConfig::default()
    })
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = {
        let server = server.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    runtime.block_on(async {
        let client = kube::Client::new(server.router(), "default");
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "vps2"}})).unwrap();
        Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web-0"}, "spec": {"nodeName": "vps2", "containers": [{"name": "web", "image": "busybox"}]}})).unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        pods.patch_status("web-0", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.0.2.17"}}))).await.unwrap();
    });

    let (ok, out, err) = kubectl(&kubectl_bin, &scratch, &["get", "ns"]);
    assert!(ok, "{err}");
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(ns) && l.contains("Active")),
            "{ns} in {out}"
        );
    }

    let (ok, out, err) = kubectl(&kubectl_bin, &scratch, &["get", "pods", "-A", "-o", "wide"]);
    assert!(ok, "{err}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header[..4],
        ["NAMESPACE", "NAME", "READY", "STATUS"],
        "{out}"
    );
    assert!(header.contains(&"IP") && header.contains(&"NODE"), "{out}");
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.contains("web-0"))
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..4],
        ["kube-system", "web-0", "0/1", "Running"],
        "{out}"
    );
    assert!(row.contains(&"10.0.2.17") && row.contains(&"vps2"), "{out}");

    let manifest = scratch.dir.join("svc.yaml");
    std::fs::write(&manifest, "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n").unwrap();
    let (ok, out, err) = kubectl(
        &kubectl_bin,
        &scratch,
        &["apply", "-f", manifest.to_str().unwrap(), "-v=6"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("service/web created"), "{out}");
    // What kubectl asked for, for the record (-v=6 logs each request).
    for line in err.lines().filter(|l| l.contains("round_trippers")) {
        println!("kubectl apply: {}", line.split("] ").nth(1).unwrap_or(line));
    }
    let (ok, out, err) = kubectl(
        &kubectl_bin,
        &scratch,
        &["apply", "-f", manifest.to_str().unwrap()],
    );
    assert!(ok && out.contains("service/web unchanged"), "{out}{err}");
    let (ok, out, err) = kubectl(&kubectl_bin, &scratch, &["get", "svc", "-o", "wide"]);
    assert!(ok, "{err}");
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row[..2], ["web", "NodePort"], "{out}");
    assert!(row[2].starts_with("10.43."), "{out}");
    assert!(
        row[4].starts_with("80:3") && row[4].ends_with("/TCP"),
        "{out}"
    );

    let _ = stop.send(());
    runtime.block_on(serving).unwrap().unwrap();
}
