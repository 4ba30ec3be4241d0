//! The BPF object is linked by `bpf-linker`, a binary cargo cannot see as a dependency: rebuild
//! when it changes so a new linker never leaves a stale object behind.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run scripts/bootstrap"),
    }
}
