//! Hashes whose values are part of Weft's behaviour (identities, Maglev tables, ClusterIP
//! candidates): every node and every build must compute the same numbers, so these are
//! written out here rather than taken from std, whose hasher may change between releases.

/// FNV-1a, 64 bits.
pub(crate) struct Fnv1a(u64);

impl Fnv1a {
    pub(crate) fn new() -> Fnv1a {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// A length-prefixed field, so that ("ab", "c") and ("a", "bc") hash differently.
    pub(crate) fn field(&mut self, bytes: &[u8]) {
        self.bytes(&(bytes.len() as u64).to_le_bytes());
        self.bytes(bytes);
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// SipHash-2-4 (Aumasson and Bernstein, 2012) of `data` under the 128-bit key `(k0, k1)`, the
/// key's bytes read little-endian as in the reference implementation. Unlike FNV, its output
/// bits all depend on every input bit, so two of its values under different keys are
/// independent: what Maglev needs of its offset and skip.
pub(crate) fn siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut s = SipState {
        v: [
            k0 ^ 0x736f_6d65_7073_6575,
            k1 ^ 0x646f_7261_6e64_6f6d,
            k0 ^ 0x6c79_6765_6e65_7261,
            k1 ^ 0x7465_6462_7974_6573,
        ],
    };
    let mut words = data.chunks_exact(8);
    for word in &mut words {
        s.absorb(u64::from_le_bytes(word.try_into().unwrap_or([0; 8])));
    }
    let mut last = [0u8; 8];
    let tail = words.remainder();
    last[..tail.len()].copy_from_slice(tail);
    // The final word carries the message length (mod 256) in its top byte.
    last[7] = data.len() as u8;
    s.absorb(u64::from_le_bytes(last));
    s.v[2] ^= 0xff;
    for _ in 0..4 {
        s.round();
    }
    s.v[0] ^ s.v[1] ^ s.v[2] ^ s.v[3]
}

struct SipState {
    v: [u64; 4],
}

impl SipState {
    fn absorb(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.round();
        self.v[0] ^= m;
    }

    fn round(&mut self) {
        let v = &mut self.v;
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference key 00 01 .. 0f.
    fn reference_key() -> (u64, u64) {
        let bytes: Vec<u8> = (0..16).collect();
        let k0 = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let k1 = u64::from_le_bytes(bytes[8..].try_into().unwrap());
        (k0, k1)
    }

    #[test]
    fn siphash_matches_the_reference_vectors() {
        let (k0, k1) = reference_key();
        // The paper's worked example: message 00 01 .. 0e.
        let message: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(k0, k1, &message), 0xa129_ca61_49be_45e5);
        // First and ninth entries of the reference implementation's vectors.h.
        assert_eq!(siphash24(k0, k1, &[]), 0x726f_db47_dd0e_0e31);
        let eight: Vec<u8> = (0..8).collect();
        assert_eq!(
            siphash24(k0, k1, &eight).to_le_bytes(),
            [0x62, 0x24, 0x93, 0x9a, 0x79, 0xf5, 0xf5, 0x93]
        );
    }

    #[test]
    fn fnv1a_matches_the_published_values() {
        let mut h = Fnv1a::new();
        assert_eq!(h.finish(), 0xcbf2_9ce4_8422_2325);
        h.bytes(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
    }
}
