//! The generator: a seeded PRNG (splitmix64, so a case is reproduced from one u64), byte-level
//! mutations of valid examples, and hostile tokens that parsers of paths and names must refuse.

/// Strings a hostile file, event or document would carry.
pub const HOSTILE: &[&str] = &[
    "../",
    "..",
    "/",
    "./",
    "/../../etc/passwd",
    "\0",
    "\n",
    "\r\n",
    "\t",
    " ",
    "\x1b[2J",
    "\x7f",
    "\u{85}",
    "\u{2028}",
    "\u{200b}",
    "\u{202e}",
    "\u{feff}",
    "\u{ff0f}",
    "\u{2215}",
    "\u{2044}",
    "\u{ff0e}\u{ff0e}",
    "\u{0430}",
    "\u{1f600}",
    "-1",
    "-0",
    "0",
    "+1",
    "0x",
    "4294967295",
    "4294967296",
    "18446744073709551616",
    "-9223372036854775809",
    "9223372036854775807",
    "99999999999999999999999999999999",
    "1e999",
    "nan",
    "=",
    "@",
    ":",
    ",",
    "\"",
    "'",
    "\\",
    "[",
    "]",
    "{",
    "}",
    "<",
    ">",
    "&",
    "*",
    "?",
];

/// Byte sequences that are not UTF-8.
const INVALID_UTF8: &[&[u8]] = &[
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xc0\xaf",
    b"\xe2\x82",
];

/// Largest input a huge repeat grows to.
pub const HUGE: usize = 1 << 20;

/// splitmix64's output function: a good 64-bit mix of `x`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small seeded generator (splitmix64): the same seed draws the same values.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix64(self.0)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True about once in `n` draws.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A length that is usually small and sometimes not: 0..8, 0..64, or 0..`max`.
    pub fn size(&mut self, max: usize) -> usize {
        match self.below(8) {
            0..=4 => self.below(8.min(max + 1)),
            5 | 6 => self.below(64.min(max + 1)),
            _ => self.below(max + 1),
        }
    }

    /// An integer that is often at a boundary: 0, 1, -1, the limits of 32 and 64 bits.
    pub fn edgy_i64(&mut self) -> i64 {
        const EDGES: &[i64] = &[
            0,
            1,
            -1,
            2,
            255,
            256,
            65535,
            65536,
            u32::MAX as i64,
            u32::MAX as i64 + 1,
            i32::MIN as i64,
            i64::MAX,
            i64::MIN,
        ];
        match self.below(3) {
            0 => *self.pick(EDGES),
            1 => self.below(100) as i64,
            _ => self.next_u64() as i64,
        }
    }

    /// A hostile token, as bytes (sometimes not UTF-8).
    pub fn hostile(&mut self) -> Vec<u8> {
        if self.one_in(6) {
            self.pick(INVALID_UTF8).to_vec()
        } else {
            self.pick(HOSTILE).as_bytes().to_vec()
        }
    }

    /// A hostile token that is valid UTF-8.
    pub fn hostile_str(&mut self) -> &'static str {
        self.pick::<&str>(HOSTILE)
    }

    /// A short string made of `alphabet` and, sometimes, hostile tokens.
    pub fn word(&mut self, alphabet: &str, max: usize) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        let mut out = String::new();
        for _ in 0..self.size(max) {
            if self.one_in(12) {
                out.push_str(self.hostile_str());
            } else {
                out.push(*self.pick(&chars));
            }
        }
        out
    }
}

/// Applies one to four random mutations to `input`, drawing inserted text from `tokens`
/// (words of the format) and the hostile tokens.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, tokens: &[&str]) {
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, input, tokens);
    }
}

fn mutate_once(rng: &mut Rng, input: &mut Vec<u8>, tokens: &[&str]) {
    let len = input.len();
    let at = rng.below(len + 1);
    let span = |rng: &mut Rng| {
        let start = rng.below(len + 1);
        let end = start + rng.size(len - start);
        start..end
    };
    match rng.below(11) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = rng.next_u64() as u8;
        }
        2 => {
            let r = span(rng);
            input.drain(r);
        }
        3 => input.truncate(at),
        4 => {
            let r = span(rng);
            let copy = input[r].to_vec();
            let to = rng.below(input.len() + 1);
            input.splice(to..to, copy);
        }
        5 | 6 if !tokens.is_empty() => {
            let token = rng.pick(tokens).as_bytes().to_vec();
            input.splice(at..at, token);
        }
        7 => {
            let token = rng.hostile();
            let r = span(rng);
            input.splice(r, token);
        }
        8 => {
            let token = rng.hostile();
            input.splice(at..at, token);
        }
        9 if rng.one_in(8) => huge_repeat(rng, input),
        10 => {
            // Swap two pieces: lines or attributes out of order.
            let a = span(rng);
            let piece = input[a.clone()].to_vec();
            input.drain(a);
            let to = rng.below(input.len() + 1);
            input.splice(to..to, piece);
        }
        _ => {
            let token = rng.hostile();
            input.extend_from_slice(&token);
        }
    }
}

/// Repeats a piece of `input` (or a hostile token) until the input is up to `HUGE` bytes.
pub fn huge_repeat(rng: &mut Rng, input: &mut Vec<u8>) {
    let len = input.len();
    let start = rng.below(len + 1);
    let end = (start + 1 + rng.below(32)).min(len);
    let piece = if start < end {
        input[start..end].to_vec()
    } else {
        rng.hostile()
    };
    let target = rng.below(HUGE) + HUGE / 16;
    let mut filler = Vec::with_capacity(target);
    while filler.len() + piece.len() <= target {
        filler.extend_from_slice(&piece);
    }
    input.splice(start..start, filler);
    input.truncate(HUGE);
}

/// One of `examples`, mutated with `tokens` as in [`mutate`].
pub fn mutated_example(rng: &mut Rng, examples: &[&str], tokens: &[&str]) -> Vec<u8> {
    let mut bytes = rng.pick(examples).as_bytes().to_vec();
    mutate(rng, &mut bytes, tokens);
    bytes
}

/// Two of `examples` (perhaps the same one twice) joined by [`splice`].
pub fn spliced_examples(rng: &mut Rng, examples: &[&str]) -> Vec<u8> {
    let a = rng.pick(examples).as_bytes();
    let b = rng.pick(examples).as_bytes();
    splice(rng, a, b)
}

/// Joins two inputs at random points: the head of one and the tail of the other.
pub fn splice(rng: &mut Rng, a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = a[..rng.below(a.len() + 1)].to_vec();
    out.extend_from_slice(&b[rng.below(b.len() + 1)..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_values() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let xs: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::new(43).next_u64(), xs[0]);
    }

    #[test]
    fn below_stays_below() {
        let mut rng = Rng::new(1);
        assert!((0..1000).all(|_| rng.below(7) < 7));
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn mutations_never_exceed_the_huge_limit_much() {
        let mut rng = Rng::new(3);
        for _ in 0..500 {
            let mut input = b"[[allow]]\nname = \"lab\"\n".to_vec();
            mutate(&mut rng, &mut input, &["name", "="]);
            assert!(input.len() <= HUGE + 4096, "{}", input.len());
        }
    }

    #[test]
    fn huge_repeat_makes_a_big_input() {
        let mut rng = Rng::new(9);
        let mut input = b"abc".to_vec();
        huge_repeat(&mut rng, &mut input);
        assert!(input.len() >= HUGE / 16, "{}", input.len());
        assert!(input.len() <= HUGE);
    }
}
