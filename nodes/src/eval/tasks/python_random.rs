//! Python's `random.Random(seed).sample`, bit for bit, so few-shot examples are drawn as
//! lm-evaluation-harness draws them (`random.Random(1234)` per task, consumed doc after doc).
//!
//! CPython 3.11 `Lib/random.py`: an int seed goes through `init_by_array` (its 32-bit words,
//! least significant first) into MT19937; `_randbelow(n)` draws `n.bit_length()` bits until the
//! value is below `n`; `sample` uses a shrinking pool for small populations and a set of drawn
//! indices otherwise.

use rand_mt::Mt;

/// A `random.Random` seeded with a non-negative int.
pub struct PythonRandom {
    mt: Mt,
}

impl PythonRandom {
    /// `random.Random(seed)`.
    pub fn new(seed: u64) -> PythonRandom {
        // init_by_array over the seed's 32-bit words, least significant first (at least one).
        let mut words = vec![seed as u32];
        if seed >> 32 != 0 {
            words.push((seed >> 32) as u32);
        }
        PythonRandom {
            mt: Mt::new_with_key(words),
        }
    }

    /// `getrandbits(k)` for `1 ≤ k ≤ 32`.
    fn bits(&mut self, k: u32) -> u32 {
        self.mt.next_u32() >> (32 - k)
    }

    /// `_randbelow(n)`: uniform in `0..n` (`n ≥ 1`, below 2³²).
    fn below(&mut self, n: usize) -> usize {
        let k = usize::BITS - n.leading_zeros();
        loop {
            let r = self.bits(k) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// `sample(range(n), k)`: `k` distinct indices of `0..n` in draw order.
    ///
    /// Errors when `k > n` (Python's "Sample larger than population").
    pub fn sample(&mut self, n: usize, k: usize) -> Result<Vec<usize>, String> {
        if k > n {
            return Err(format!("cannot draw {k} of {n}"));
        }
        let mut setsize = 21usize;
        if k > 5 {
            let exponent = ((k * 3) as f64).ln() / 4f64.ln();
            setsize += 4usize.pow(exponent.ceil() as u32);
        }
        let mut result = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.below(n - i);
                result.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::new();
            for _ in 0..k {
                let mut j = self.below(n);
                while !selected.insert(j) {
                    j = self.below(n);
                }
                result.push(j);
            }
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors printed by CPython 3.11.
    #[test]
    fn draws_what_cpython_draws() {
        let mut r = PythonRandom::new(1234);
        assert_eq!(
            [r.mt.next_u32(), r.mt.next_u32(), r.mt.next_u32()],
            [4150886329, 3342196574, 1892932127]
        );
        let mut r = PythonRandom::new(1234);
        let draws: Vec<Vec<usize>> = (0..3).map(|_| r.sample(4, 2).unwrap()).collect();
        assert_eq!(draws, [vec![3, 0], vec![0, 3], vec![0, 2]]);
        let mut r = PythonRandom::new(1234);
        assert_eq!(r.sample(100, 5).unwrap(), [99, 56, 14, 0, 11]);
        assert_eq!(r.sample(25, 6).unwrap(), [18, 1, 21, 2, 3, 11]);
        assert_eq!(
            r.sample(1000, 26).unwrap(),
            [
                242, 17, 31, 807, 16, 354, 663, 638, 495, 630, 474, 152, 93, 187, 730, 117, 865,
                14, 515, 498, 901, 988, 255, 66, 683, 554
            ]
        );
        assert!(r.sample(3, 4).is_err());
    }
}
