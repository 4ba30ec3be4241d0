//! Geneve (RFC 8926) payloads: what follows the outer UDP header of a datagram to port 6081 —
//! the Geneve header, its options, the inner Ethernet frame. A test sends one from a real UDP
//! socket to play a tunnel peer (or someone pretending to be one).

/// Geneve's UDP port.
pub const GENEVE_PORT: u16 = 6081;
/// Protocol type of an inner Ethernet frame (Transparent Ethernet Bridging).
pub const ETH_P_TEB: u16 = 0x6558;
/// Version 0, no flags, the fixed part of the header.
pub const GENEVE_HEADER_LEN: usize = 8;

/// A Geneve header with options, built around an inner frame.
#[derive(Debug, Clone, Default)]
pub struct GeneveBuilder {
    vni: u32,
    options: Vec<u8>,
}

impl GeneveBuilder {
    /// A header for virtual network `vni` (24 bits), without options.
    pub fn new(vni: u32) -> GeneveBuilder {
        GeneveBuilder {
            vni: vni & 0x00ff_ffff,
            options: Vec::new(),
        }
    }

    /// Appends an option of `class` and `kind` carrying `data`, zero-padded to whole 4-byte
    /// words (at most 31 of them, the field's limit: longer data is cut).
    pub fn option(mut self, class: u16, kind: u8, data: &[u8]) -> GeneveBuilder {
        const MAX_WORDS: usize = 0x1f;
        let words = data.len().div_ceil(4).min(MAX_WORDS);
        self.options.extend(class.to_be_bytes());
        self.options.push(kind);
        self.options.push(words as u8);
        let mut padded = data.iter().copied().take(words * 4).collect::<Vec<_>>();
        padded.resize(words * 4, 0);
        self.options.extend(padded);
        self
    }

    /// The header, its options and `inner` (a whole Ethernet frame).
    pub fn build(&self, inner: &[u8]) -> Vec<u8> {
        let opt_words = (self.options.len() / 4).min(0x3f) as u8;
        let mut out = Vec::with_capacity(GENEVE_HEADER_LEN + self.options.len() + inner.len());
        out.push(opt_words);
        out.push(0);
        out.extend(ETH_P_TEB.to_be_bytes());
        out.extend((self.vni << 8).to_be_bytes());
        out.extend(&self.options);
        out.extend(inner);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_options_and_inner_frame_as_on_the_wire() {
        let inner = [0xee; 14];
        let payload = GeneveBuilder::new(2)
            .option(0x014b, 0x01, &3000u32.to_be_bytes())
            .option(0x014b, 0x02, &[198, 51, 100, 77, 0, 53])
            .build(&inner);
        let want: Vec<u8> = [
            // 5 words of options, version 0; no flags; Ethernet inside; VNI 2.
            &[0x05, 0x00, 0x65, 0x58, 0x00, 0x00, 0x02, 0x00][..],
            // Option 1: class, type, 1 word, identity 3000.
            &[0x01, 0x4b, 0x01, 0x01, 0x00, 0x00, 0x0b, 0xb8],
            // Option 2: 2 words, the data padded with zeros.
            &[0x01, 0x4b, 0x02, 0x02, 198, 51, 100, 77, 0, 53, 0, 0],
            &inner,
        ]
        .concat();
        assert_eq!(payload, want);
    }

    #[test]
    fn the_vni_keeps_24_bits() {
        let payload = GeneveBuilder::new(0x1234_5678).build(&[]);
        assert_eq!(&payload[4..8], &[0x34, 0x56, 0x78, 0x00]);
    }
}
