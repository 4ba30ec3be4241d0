//! Builds the eBPF programs (crate `weft-ebpf`) for bpfel-unknown-none with aya-build, so that a
//! plain `cargo build` produces the object this crate embeds.
//!
//! The programs need `-Z build-std=core`. We build them with the repository's pinned stable
//! toolchain and let that nested build use unstable flags through RUSTC_BOOTSTRAP, rather than
//! depend on a nightly the machine may not have (see design §7).

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "weft-ebpf")
        .ok_or_else(|| anyhow!("package weft-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", ebpf.manifest_path))?;

    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "1.95.0".to_string());
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    // SAFETY: the build script is single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };

    aya_build::build_ebpf(
        [Package {
            name: "weft-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
