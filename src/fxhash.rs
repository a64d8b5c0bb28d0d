//! A fast hasher for maps whose keys come from configuration (tenant and proxy ids, model
//! names in the price table, metric label sets), looked up on every request. The standard
//! library's SipHash resists keys chosen to collide, which matters only for maps an attacker
//! fills; these are filled from configuration, and a request only looks a name up.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` under [`Fx`].
pub type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// rustc's FxHash: a rotate, a xor and a multiply per word.
#[derive(Default)]
pub struct Fx(u64);

impl Fx {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0; 8];
            w.copy_from_slice(word);
            self.add(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;

    #[test]
    fn fx_hashes_every_byte_and_tells_lengths_apart() {
        let hash = |bytes: &[u8]| {
            let mut h = Fx::default();
            h.write(bytes);
            h.finish()
        };
        assert_ne!(hash(b"abcdefgh1"), hash(b"abcdefgh2"));
        assert_ne!(hash(b"tenant-a"), hash(b"tenant-b"));
        // `str`'s Hash adds a 0xff after the bytes, so "ab"+"c" and "a"+"bc" differ.
        let labels = |x: &str, y: &str| {
            let mut h = Fx::default();
            (x, y).hash(&mut h);
            h.finish()
        };
        assert_ne!(labels("ab", "c"), labels("a", "bc"));
    }
}
