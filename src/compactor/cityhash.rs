//! CityHash64 v1.0.2 and ClickHouse's way of hashing several columns with it, so that
//! clicktrail can compute `cityHash64(col1, col2, ...)` exactly as ClickHouse does (18.16 and
//! current releases alike) over rows read back from an archive file.
//!
//! ClickHouse pins this old CityHash release (its `cityhash102` library); later CityHash
//! releases changed the function, so a generic CityHash crate would not match. The
//! `cityhash-rs` crate the `clickhouse` client already depends on exposes only the 128-bit
//! variant used for block checksums.

const K0: u64 = 0xc3a5_c85c_97cb_3127;
const K1: u64 = 0xb492_b66f_be98_f273;
const K2: u64 = 0x9ae1_6a3b_2f90_404f;
const K3: u64 = 0xc949_d7c7_509e_6557;
const K_MUL: u64 = 0x9ddf_ea08_eb38_2d69;

#[inline]
fn fetch64(s: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"))
}

#[inline]
fn fetch32(s: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(
        s[at..at + 4].try_into().expect("4 bytes"),
    ))
}

#[inline]
fn rotate(v: u64, shift: u32) -> u64 {
    v.rotate_right(shift)
}

#[inline]
fn shift_mix(v: u64) -> u64 {
    v ^ (v >> 47)
}

/// CityHash's `Hash128to64`; ClickHouse also uses it to combine the hashes of several arguments.
#[inline]
pub(super) fn hash_128_to_64(low: u64, high: u64) -> u64 {
    let mut a = (low ^ high).wrapping_mul(K_MUL);
    a ^= a >> 47;
    let mut b = (high ^ a).wrapping_mul(K_MUL);
    b ^= b >> 47;
    b.wrapping_mul(K_MUL)
}

fn hash_len_0_to_16(s: &[u8]) -> u64 {
    let len = s.len();
    if len > 8 {
        let a = fetch64(s, 0);
        let b = fetch64(s, len - 8);
        return hash_128_to_64(a, (b.wrapping_add(len as u64)).rotate_right(len as u32)) ^ b;
    }
    if len >= 4 {
        let a = fetch32(s, 0);
        return hash_128_to_64((len as u64).wrapping_add(a << 3), fetch32(s, len - 4));
    }
    if len > 0 {
        let a = u64::from(s[0]);
        let b = u64::from(s[len >> 1]);
        let c = u64::from(s[len - 1]);
        let y = a.wrapping_add(b << 8);
        let z = (len as u64).wrapping_add(c << 2);
        return shift_mix(y.wrapping_mul(K2) ^ z.wrapping_mul(K3)).wrapping_mul(K2);
    }
    K2
}

fn hash_len_17_to_32(s: &[u8]) -> u64 {
    let len = s.len();
    let a = fetch64(s, 0).wrapping_mul(K1);
    let b = fetch64(s, 8);
    let c = fetch64(s, len - 8).wrapping_mul(K2);
    let d = fetch64(s, len - 16).wrapping_mul(K0);
    hash_128_to_64(
        rotate(a.wrapping_sub(b), 43)
            .wrapping_add(rotate(c, 30))
            .wrapping_add(d),
        a.wrapping_add(rotate(b ^ K3, 20))
            .wrapping_sub(c)
            .wrapping_add(len as u64),
    )
}

fn hash_len_33_to_64(s: &[u8]) -> u64 {
    let len = s.len();
    let mut z = fetch64(s, 24);
    let mut a = fetch64(s, 0).wrapping_add(
        (len as u64)
            .wrapping_add(fetch64(s, len - 16))
            .wrapping_mul(K0),
    );
    let mut b = rotate(a.wrapping_add(z), 52);
    let mut c = rotate(a, 37);
    a = a.wrapping_add(fetch64(s, 8));
    c = c.wrapping_add(rotate(a, 7));
    a = a.wrapping_add(fetch64(s, 16));
    let vf = a.wrapping_add(z);
    let vs = b.wrapping_add(rotate(a, 31)).wrapping_add(c);
    a = fetch64(s, 16).wrapping_add(fetch64(s, len - 32));
    z = fetch64(s, len - 8);
    b = rotate(a.wrapping_add(z), 52);
    c = rotate(a, 37);
    a = a.wrapping_add(fetch64(s, len - 24));
    c = c.wrapping_add(rotate(a, 7));
    a = a.wrapping_add(fetch64(s, len - 16));
    let wf = a.wrapping_add(z);
    let ws = b.wrapping_add(rotate(a, 31)).wrapping_add(c);
    let r = shift_mix(
        vf.wrapping_add(ws)
            .wrapping_mul(K2)
            .wrapping_add(wf.wrapping_add(vs).wrapping_mul(K0)),
    );
    shift_mix(r.wrapping_mul(K0).wrapping_add(vs)).wrapping_mul(K2)
}

#[inline]
fn weak_hash_len_32_with_seeds(s: &[u8], at: usize, mut a: u64, mut b: u64) -> (u64, u64) {
    let w = fetch64(s, at);
    let x = fetch64(s, at + 8);
    let y = fetch64(s, at + 16);
    let z = fetch64(s, at + 24);
    a = a.wrapping_add(w);
    b = rotate(b.wrapping_add(a).wrapping_add(z), 21);
    let c = a;
    a = a.wrapping_add(x).wrapping_add(y);
    b = b.wrapping_add(rotate(a, 44));
    (a.wrapping_add(z), b.wrapping_add(c))
}

/// CityHash64 of v1.0.2, ClickHouse's `cityHash64(s)` of a single string.
pub(super) fn city_hash_64(s: &[u8]) -> u64 {
    let len = s.len();
    if len <= 16 {
        return hash_len_0_to_16(s);
    }
    if len <= 32 {
        return hash_len_17_to_32(s);
    }
    if len <= 64 {
        return hash_len_33_to_64(s);
    }
    let mut x = fetch64(s, 0);
    let mut y = fetch64(s, len - 16) ^ K1;
    let mut z = fetch64(s, len - 56) ^ K0;
    let mut v = weak_hash_len_32_with_seeds(s, len - 64, len as u64, y);
    let mut w = weak_hash_len_32_with_seeds(s, len - 32, (len as u64).wrapping_mul(K1), K0);
    z = z.wrapping_add(shift_mix(v.1).wrapping_mul(K1));
    x = rotate(z.wrapping_add(x), 39).wrapping_mul(K1);
    y = rotate(y, 33).wrapping_mul(K1);
    let mut at = 0;
    let mut left = (len - 1) & !63;
    loop {
        x = rotate(
            x.wrapping_add(y)
                .wrapping_add(v.0)
                .wrapping_add(fetch64(s, at + 16)),
            37,
        )
        .wrapping_mul(K1);
        y = rotate(y.wrapping_add(v.1).wrapping_add(fetch64(s, at + 48)), 42).wrapping_mul(K1);
        x ^= w.1;
        y ^= v.0;
        z = rotate(z ^ w.0, 33);
        v = weak_hash_len_32_with_seeds(s, at, v.1.wrapping_mul(K1), x.wrapping_add(w.0));
        w = weak_hash_len_32_with_seeds(s, at + 32, z.wrapping_add(w.1), y);
        std::mem::swap(&mut z, &mut x);
        at += 64;
        left -= 64;
        if left == 0 {
            break;
        }
    }
    hash_128_to_64(
        hash_128_to_64(v.0, w.0)
            .wrapping_add(shift_mix(y).wrapping_mul(K1))
            .wrapping_add(z),
        hash_128_to_64(v.1, w.1).wrapping_add(x),
    )
}

/// ClickHouse's hash of an integer column value inside `cityHash64(...)`: the value's bytes
/// zero-extended to 64 bits, then `intHash64(x ^ 0x4CF2D2BAAE6DA887)` (a Murmur finaliser).
#[inline]
pub(super) fn int_hash(value_bits: u64) -> u64 {
    let mut x = value_bits ^ 0x4CF2_D2BA_AE6D_A887;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Builds `cityHash64(a, b, c, ...)` one argument at a time.
#[derive(Default)]
pub(super) struct RowHasher {
    h: Option<u64>,
}

impl RowHasher {
    #[inline]
    fn add(&mut self, h: u64) {
        self.h = Some(match self.h {
            None => h,
            Some(prev) => hash_128_to_64(prev, h),
        });
    }

    #[inline]
    pub(super) fn str(&mut self, s: &[u8]) {
        self.add(city_hash_64(s));
    }

    /// An unsigned integer column (UInt8/16/32/64, DateTime).
    #[inline]
    pub(super) fn uint(&mut self, v: u64) {
        self.add(int_hash(v));
    }

    /// An Int32 column: its four bytes, zero-extended (not sign-extended), as ClickHouse does.
    #[inline]
    pub(super) fn i32(&mut self, v: i32) {
        self.add(int_hash(u64::from(v as u32)));
    }

    pub(super) fn finish(&self) -> u64 {
        self.h.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_clickhouse_at_every_length_class() {
        // SELECT cityHash64(substring(S, 1, len)) on ClickHouse 18.16.1 and 26.9 (chDB), where
        // S is 300 bytes: 'Z' at every fifth position, else 'a' + (i * 7) % 26. The lengths
        // cover each branch of the function (0–16, 17–32, 33–64, and the 64-byte loop).
        let s: Vec<u8> = (0..300)
            .map(|i| {
                if i % 5 == 0 {
                    b'Z'
                } else {
                    b'a' + (i * 7 % 26) as u8
                }
            })
            .collect();
        for (len, want) in [
            (0, 11160318154034397263u64),
            (3, 9158932452828090658),
            (8, 8002126873574004399),
            (12, 12676512382236494413),
            (17, 12383431738726751196),
            (32, 4619190295708360589),
            (33, 7780944499073043207),
            (64, 12793987226255277599),
            (65, 7166094255009196946),
            (128, 3214377186829738761),
            (129, 8770998570969176803),
            (299, 2186725597965873981),
        ] {
            assert_eq!(city_hash_64(&s[..len]), want, "length {len}");
        }
    }
}
