//! Python's `random.Random`, to the bit: the Mersenne Twister (MT19937) as CPython seeds it
//! from an integer, and the draws built on it that reproduce what a Python tool chose with a
//! fixed seed (lm-evaluation-harness picks its few-shot examples with
//! `random.Random(1234).sample(...)`). Not for hone's own randomness ([`crate::rng`]).

const N: usize = 624;
const M: usize = 397;

pub struct PythonRandom {
    state: [u32; N],
    index: usize,
}

impl PythonRandom {
    /// `random.Random(seed)` for an integer seed: the state from `init_by_array` over the
    /// seed's absolute value in 32-bit words, least significant first (CPython's
    /// `random_seed`).
    pub fn new(seed: i128) -> PythonRandom {
        let mut n = seed.unsigned_abs();
        let mut key = Vec::new();
        while n > 0 {
            key.push(n as u32);
            n >>= 32;
        }
        if key.is_empty() {
            key.push(0);
        }
        let mut r = PythonRandom {
            state: [0; N],
            index: N,
        };
        r.init_by_array(&key);
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.state[0] = s;
        for i in 1..N {
            let prev = self.state[i - 1];
            self.state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.state[i - 1];
            self.state[i] = (self.state[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.state[0] = self.state[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.state[i - 1];
            self.state[i] = (self.state[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.state[0] = self.state[N - 1];
                i = 1;
            }
        }
        self.state[0] = 0x8000_0000;
    }

    fn twist(&mut self) {
        for k in 0..N {
            let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % N] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.state[k] = self.state[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// The next 32 random bits (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random()`: a float in [0, 1) from 53 random bits.
    pub fn random(&mut self) -> f64 {
        let a = f64::from(self.next_u32() >> 5);
        let b = f64::from(self.next_u32() >> 6);
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `getrandbits(k)` for `k` up to 64.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits({k}) is past what hone needs");
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return u64::from(self.next_u32() >> (32 - k));
        }
        // Little-endian 32-bit words, the last one cut to the bits left.
        let low = u64::from(self.next_u32());
        let high = u64::from(self.next_u32() >> (64 - k));
        low | (high << 32)
    }

    /// `_randbelow(n)`: uniform in [0, n), by rejection on `n.bit_length()` bits.
    pub fn randbelow(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let k = usize::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// `sample(range(n), k)`: `k` distinct indices below `n`, in the order Python picks them
    /// (a pool for small populations, rejection from a set for large ones, as CPython 3.11+).
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample larger than population");
        let mut setsize = 21usize;
        if k > 5 {
            setsize += 4usize.pow(((k * 3) as f64).log(4.0).ceil() as u32);
        }
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            (0..k)
                .map(|i| {
                    let j = self.randbelow(n - i);
                    let picked = pool[j];
                    pool[j] = pool[n - i - 1];
                    picked
                })
                .collect()
        } else {
            let mut selected = std::collections::HashSet::new();
            (0..k)
                .map(|_| {
                    let mut j = self.randbelow(n);
                    while selected.contains(&j) {
                        j = self.randbelow(n);
                    }
                    selected.insert(j);
                    j
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values CPython 3.11 gives for the same calls.
    #[test]
    fn draws_equal_cpythons() {
        let mut r = PythonRandom::new(1234);
        let bits: Vec<u64> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(bits, [4150886329, 3342196574, 1892932127]);
        assert_eq!(PythonRandom::new(1234).random(), 0.9664535356921388);
        let mut r = PythonRandom::new(1234);
        assert_eq!(r.sample(100, 5), [99, 56, 14, 0, 11]);
        assert_eq!(r.sample(10, 3), [9, 0, 1]);
        assert_eq!(
            r.sample(1000, 30),
            [
                100, 784, 363, 242, 17, 31, 807, 16, 354, 663, 638, 495, 630, 474, 152, 93, 187,
                730, 117, 865, 14, 515, 498, 901, 988, 255, 66, 683, 554, 934
            ]
        );
        assert_eq!(PythonRandom::new(0).sample(7, 7), [6, 3, 5, 0, 1, 2, 4]);
        assert_eq!(PythonRandom::new((1 << 40) + 5).getrandbits(32), 2166296868);
    }
}
