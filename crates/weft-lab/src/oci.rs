//! A minimal OCI image built on the machine, for a container runtime to import: one
//! uncompressed layer holding a statically linked busybox and its applet links, an image config,
//! a manifest and an index, packed as an OCI image layout in a tar archive. No registry is
//! needed (none is reachable from these machines).

use std::{fs, path::Path};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use weft_cni::sha256;

/// The applets the image links to `/bin/busybox`, so that commands read like a real image's.
pub const APPLETS: &[&str] = &["sh", "nc", "cat", "echo", "ip", "sleep", "ls"];

const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The annotation containerd names an imported image by.
const CONTAINERD_NAME_ANNOTATION: &str = "io.containerd.image.name";

/// Writes an OCI image layout archive to `out`: image `reference` (e.g.
/// `weft.local/busybox:latest`) whose only layer holds `busybox` as `/bin/busybox` and the
/// [`APPLETS`] as links to it. `busybox` must be statically linked: the image has no libc.
pub fn write_busybox_image(busybox: &Path, reference: &str, out: &Path) -> anyhow::Result<()> {
    let binary = fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    ensure_static_elf(&binary)
        .with_context(|| format!("{} cannot be the image's only binary", busybox.display()))?;
    let archive = image_archive(&binary, reference, host_architecture()?)?;
    fs::write(out, archive).with_context(|| format!("writing {}", out.display()))
}

/// The OCI name of the machine's architecture.
fn host_architecture() -> anyhow::Result<&'static str> {
    Ok(match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        other => bail!("no OCI architecture name known for {other}"),
    })
}

/// The layout archive: `oci-layout`, `index.json` and the blobs (layer, config, manifest).
fn image_archive(busybox: &[u8], reference: &str, architecture: &str) -> anyhow::Result<Vec<u8>> {
    let layer = busybox_layer(busybox)?;
    let config = to_json(&json!({
        "architecture": architecture,
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"] },
        // Uncompressed, so the layer's digest is also its diff ID.
        "rootfs": { "type": "layers", "diff_ids": [digest(&layer)] },
    }))?;
    let manifest = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config),
        "layers": [descriptor(LAYER_MEDIA_TYPE, &layer)],
    }))?;
    let mut manifest_entry = descriptor(MANIFEST_MEDIA_TYPE, &manifest);
    manifest_entry["annotations"] = json!({ CONTAINERD_NAME_ANNOTATION: reference });
    manifest_entry["platform"] = json!({ "architecture": architecture, "os": "linux" });
    let index = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [manifest_entry],
    }))?;

    let mut tar = TarWriter::default();
    tar.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar.file("index.json", 0o644, &index)?;
    tar.dir("blobs", 0o755)?;
    tar.dir("blobs/sha256", 0o755)?;
    for blob in [&layer, &config, &manifest] {
        tar.file(
            &format!("blobs/sha256/{}", sha256::hex_digest(blob)),
            0o644,
            blob,
        )?;
    }
    Ok(tar.finish())
}

fn busybox_layer(busybox: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut tar = TarWriter::default();
    tar.dir("bin", 0o755)?;
    tar.file("bin/busybox", 0o755, busybox)?;
    for applet in APPLETS {
        tar.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    Ok(tar.finish())
}

fn digest(blob: &[u8]) -> String {
    format!("sha256:{}", sha256::hex_digest(blob))
}

fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest(blob), "size": blob.len() })
}

fn to_json(value: &Value) -> anyhow::Result<Vec<u8>> {
    serde_json::to_vec(value).context("serializing image metadata")
}

/// Fails unless `binary` is an ELF executable without a program interpreter (PT_INTERP), that
/// is, one that runs in an image without a dynamic loader and libc.
fn ensure_static_elf(binary: &[u8]) -> anyhow::Result<()> {
    ensure!(binary.starts_with(b"\x7fELF"), "not an ELF file");
    let header = Elf::header(binary).context("truncated ELF header")?;
    for i in 0..header.phnum {
        let at = header.phoff + i * header.phentsize;
        let p_type = header
            .u32_at(binary, at)
            .context("truncated program header")?;
        ensure!(
            p_type != PT_INTERP,
            "it is dynamically linked (install busybox-static, not busybox)"
        );
    }
    Ok(())
}

const PT_INTERP: u32 = 3;

/// Where an ELF file's program headers are, and its byte order.
struct Elf {
    big_endian: bool,
    phoff: usize,
    phentsize: usize,
    phnum: usize,
}

impl Elf {
    fn header(binary: &[u8]) -> Option<Elf> {
        let is_64 = *binary.get(4)? == 2;
        let big_endian = *binary.get(5)? == 2;
        let mut elf = Elf {
            big_endian,
            phoff: 0,
            phentsize: 0,
            phnum: 0,
        };
        let (phoff, phentsize_at) = if is_64 {
            (elf.u64_at(binary, 0x20)?, 0x36)
        } else {
            (u64::from(elf.u32_at(binary, 0x1c)?), 0x2a)
        };
        elf.phoff = usize::try_from(phoff).ok()?;
        elf.phentsize = usize::from(elf.u16_at(binary, phentsize_at)?);
        elf.phnum = usize::from(elf.u16_at(binary, phentsize_at + 2)?);
        Some(elf)
    }

    fn bytes<const N: usize>(binary: &[u8], at: usize) -> Option<[u8; N]> {
        binary.get(at..at.checked_add(N)?)?.try_into().ok()
    }

    fn u16_at(&self, binary: &[u8], at: usize) -> Option<u16> {
        let b = Self::bytes(binary, at)?;
        Some(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32_at(&self, binary: &[u8], at: usize) -> Option<u32> {
        let b = Self::bytes(binary, at)?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn u64_at(&self, binary: &[u8], at: usize) -> Option<u64> {
        let b = Self::bytes(binary, at)?;
        Some(if self.big_endian {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }
}

/// A ustar archive written in memory: directories, regular files and symbolic links, owned by
/// root, with a fixed timestamp so that the same input gives the same bytes (and digests).
#[derive(Default)]
struct TarWriter {
    out: Vec<u8>,
}

const BLOCK: usize = 512;
const MTIME: u64 = 0;

impl TarWriter {
    fn dir(&mut self, path: &str, mode: u32) -> anyhow::Result<()> {
        self.header(&format!("{path}/"), mode, 0, b'5', "")
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
        self.header(path, mode, data.len() as u64, b'0', "")?;
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        self.header(path, 0o777, 0, b'2', target)
    }

    /// The archive, ended by two zero blocks.
    fn finish(mut self) -> Vec<u8> {
        self.out.resize(self.out.len() + 2 * BLOCK, 0);
        self.out
    }

    fn pad(&mut self) {
        let rem = self.out.len() % BLOCK;
        if rem != 0 {
            self.out.resize(self.out.len() + BLOCK - rem, 0);
        }
    }

    fn header(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        kind: u8,
        link: &str,
    ) -> anyhow::Result<()> {
        let mut h = [0u8; BLOCK];
        put_str(&mut h[0..100], path).with_context(|| format!("tar entry name {path}"))?;
        put_octal(&mut h[100..108], u64::from(mode))?;
        put_octal(&mut h[108..116], 0)?; // uid
        put_octal(&mut h[116..124], 0)?; // gid
        put_octal(&mut h[124..136], size).with_context(|| format!("size of {path}"))?;
        put_octal(&mut h[136..148], MTIME)?;
        h[156] = kind;
        put_str(&mut h[157..257], link).with_context(|| format!("link target of {path}"))?;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        put_str(&mut h[265..297], "root")?;
        put_str(&mut h[297..329], "root")?;
        // The checksum is computed with its own field read as eight spaces.
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        put_octal(&mut h[148..155], sum)?;
        h[155] = b' ';
        self.out.extend_from_slice(&h);
        Ok(())
    }
}

/// A NUL-padded string field (a field-long string has no NUL, as ustar allows).
fn put_str(field: &mut [u8], s: &str) -> anyhow::Result<()> {
    ensure!(
        s.len() <= field.len(),
        "`{s}` is longer than {} bytes",
        field.len()
    );
    field[..s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

/// A zero-padded octal number ending in NUL.
fn put_octal(field: &mut [u8], value: u64) -> anyhow::Result<()> {
    let digits = format!("{value:0width$o}", width = field.len() - 1);
    ensure!(
        digits.len() < field.len(),
        "{value} does not fit a {}-byte tar field",
        field.len()
    );
    field[..digits.len()].copy_from_slice(digits.as_bytes());
    field[digits.len()] = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, type flag, link target, contents) of every entry of a ustar archive.
    fn entries(archive: &[u8]) -> Vec<(String, u8, String, Vec<u8>)> {
        let text = |b: &[u8]| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8_lossy(&b[..end]).into_owned()
        };
        let mut out = Vec::new();
        let mut at = 0;
        while at + BLOCK <= archive.len() && archive[at..at + BLOCK].iter().any(|&b| b != 0) {
            let h = &archive[at..at + BLOCK];
            let mut for_sum = h.to_vec();
            for_sum[148..156].fill(b' ');
            let sum: u64 = for_sum.iter().map(|&b| u64::from(b)).sum();
            let stored = u64::from_str_radix(text(&h[148..155]).trim(), 8).expect("octal sum");
            assert_eq!(sum, stored, "checksum of {}", text(&h[..100]));
            let size = usize::from_str_radix(&text(&h[124..136]), 8).expect("octal size");
            let data = archive[at + BLOCK..at + BLOCK + size].to_vec();
            out.push((text(&h[..100]), h[156], text(&h[157..257]), data));
            at += BLOCK + size.div_ceil(BLOCK) * BLOCK;
        }
        assert_eq!(archive.len(), at + 2 * BLOCK, "two zero blocks end it");
        out
    }

    fn static_elf() -> Vec<u8> {
        // A 64-bit little-endian header with one PT_LOAD program header at offset 64.
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        elf
    }

    #[test]
    fn a_tar_entry_reads_back() {
        let mut tar = TarWriter::default();
        tar.dir("bin", 0o755).expect("dir");
        tar.file("bin/x", 0o755, &[7u8; 600]).expect("file");
        tar.symlink("bin/sh", "x").expect("symlink");
        let got = entries(&tar.finish());
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].0.as_str(), got[0].1), ("bin/", b'5'));
        assert_eq!((got[1].0.as_str(), got[1].1), ("bin/x", b'0'));
        assert_eq!(got[1].3, vec![7u8; 600]);
        assert_eq!(
            (got[2].0.as_str(), got[2].1, got[2].2.as_str()),
            ("bin/sh", b'2', "x")
        );
    }

    #[test]
    fn a_name_too_long_for_ustar_is_refused() {
        let mut tar = TarWriter::default();
        assert!(tar.file(&"a".repeat(101), 0o644, b"").is_err());
    }

    #[test]
    fn the_layout_references_its_blobs_by_digest() {
        let archive =
            image_archive(&static_elf(), "weft.local/busybox:t", "amd64").expect("archive");
        let files = entries(&archive);
        let blob = |d: &str| -> Vec<u8> {
            let name = format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
            let entry = files.iter().find(|f| f.0 == name);
            entry.unwrap_or_else(|| panic!("no {name}")).3.clone()
        };
        for (name, _, _, data) in &files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/")
                && !hex.is_empty()
            {
                assert_eq!(&sha256::hex_digest(data), hex, "{name}");
            }
        }
        let index: Value =
            serde_json::from_slice(&files.iter().find(|f| f.0 == "index.json").expect("index").3)
                .expect("index json");
        let entry = &index["manifests"][0];
        assert_eq!(
            entry["annotations"][CONTAINERD_NAME_ANNOTATION],
            "weft.local/busybox:t"
        );
        assert_eq!(entry["platform"]["architecture"], "amd64");
        let manifest: Value =
            serde_json::from_slice(&blob(entry["digest"].as_str().expect("digest")))
                .expect("manifest json");
        let config: Value =
            serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().expect("cfg")))
                .expect("config json");
        let layer_digest = manifest["layers"][0]["digest"].as_str().expect("layer");
        assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest);
        let layer = entries(&blob(layer_digest));
        assert!(
            layer
                .iter()
                .any(|e| e.0 == "bin/busybox" && e.3 == static_elf())
        );
        assert!(layer.iter().any(|e| e.0 == "bin/nc" && e.2 == "busybox"));
    }

    #[test]
    fn only_a_static_elf_is_accepted() {
        assert!(ensure_static_elf(&static_elf()).is_ok());
        let mut dynamic = static_elf();
        dynamic[64..68].copy_from_slice(&PT_INTERP.to_le_bytes());
        let err = ensure_static_elf(&dynamic).expect_err("PT_INTERP refused");
        assert!(format!("{err:#}").contains("busybox-static"), "{err:#}");
        assert!(ensure_static_elf(b"#!/bin/sh\n").is_err());
        // Cut inside the program header's type.
        assert!(ensure_static_elf(&static_elf()[..66]).is_err());
    }
}
