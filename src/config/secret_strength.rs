//! A rough strength estimate of the mesh secret, behind the config check's low-entropy warning.
//!
//! The handshake (wire version 2, a PAKE) gives an attacker no offline guessing oracle: each
//! connection tests one guess, and the listener counts and logs every failure. A guessable
//! secret is still guessable online, and anyone who reads a config file or an old capture of a
//! v1 handshake can still test it, so the config check warns (never fails) below
//! [`SECRET_MIN_BITS`].
//!
//! The estimate is deliberately simple and errs low for structured secrets: each character
//! costs `log2(pool)` bits, where the pool is the union of the character classes that occur
//! (lowercase 26, uppercase 26, digits 10, ASCII symbols and space 33, anything else 100);
//! a common password word (`password`, `secret`, `qwerty`, …, any case) costs [`WORD_BITS`];
//! a stretch of 3 or more characters that already occurred earlier costs the bits to say where
//! from and how long; a run that steps by the same -1, 0 or +1 from the previous character
//! (`aaaa`, `abcd`, `4321`) costs the bits to say which step and how long.
//! It does not know every dictionary: random-looking text made of uncommon words scores high.

/// Below this many estimated bits the config check warns about the secret: 64 bits keep even an
/// attacker who somehow tests guesses offline busy for years; online, far beyond reach.
pub const SECRET_MIN_BITS: f64 = 64.0;

/// What one common password word costs, in bits: an attack dictionary of about 16 000 words.
pub const WORD_BITS: f64 = 14.0;

/// Common words of weak and placeholder secrets (lowercase ASCII, 4+ characters); matched
/// case-insensitively, longest first.
const COMMON_WORDS: &[&str] = &[
    "password",
    "passw0rd",
    "passphrase",
    "secret",
    "shared",
    "your",
    "mesh",
    "clawmatrix",
    "claw",
    "matrix",
    "openclaw",
    "admin",
    "changeme",
    "change",
    "default",
    "letmein",
    "welcome",
    "qwerty",
    "qwertz",
    "azerty",
    "asdf",
    "zxcv",
    "test",
    "example",
    "token",
    "master",
    "dragon",
    "monkey",
    "login",
    "root",
    "pass",
    "hello",
    "love",
    "sunshine",
    "trustno1",
    "iloveyou",
    "football",
    "baseball",
    "princess",
    "shadow",
    "superman",
    "cluster",
    "node",
    "cloud",
    "home",
    "office",
    "gateway",
    "private",
    "hunter",
    "replace",
    "placeholder",
    "abc123",
];

fn pool_bits(chars: &[char]) -> f64 {
    let (mut lower, mut upper, mut digit, mut symbol, mut other) =
        (false, false, false, false, false);
    for c in chars {
        match c {
            'a'..='z' => lower = true,
            'A'..='Z' => upper = true,
            '0'..='9' => digit = true,
            c if c.is_ascii() => symbol = true,
            _ => other = true,
        }
    }
    let pool = [
        (lower, 26),
        (upper, 26),
        (digit, 10),
        (symbol, 33),
        (other, 100),
    ]
    .iter()
    .filter(|(present, _)| *present)
    .map(|(_, n)| *n)
    .sum::<u32>();
    f64::from(pool.max(1)).log2()
}

/// Length of the longest common word starting at `i`, if any.
fn word_at(chars: &[char], i: usize) -> Option<usize> {
    COMMON_WORDS
        .iter()
        .filter(|w| {
            let n = w.len();
            i + n <= chars.len()
                && w.chars()
                    .zip(&chars[i..i + n])
                    .all(|(a, b)| a == b.to_ascii_lowercase())
        })
        .map(|w| w.len())
        .max()
}

/// Length of the longest stretch (3 or more characters) at `i` that also starts earlier.
fn repeat_at(chars: &[char], i: usize) -> Option<usize> {
    (0..i)
        .map(|j| {
            chars[i..]
                .iter()
                .zip(&chars[j..])
                .take_while(|(a, b)| a == b)
                .count()
        })
        .max()
        .filter(|&n| n >= 3)
}

/// Length of the run at `i` (1 or more) where each character is the previous one plus the same
/// step of -1, 0 or +1 (`aaaa`, `abcd`, `4321`), continuing from `chars[i - 1]`.
fn run_at(chars: &[char], i: usize) -> Option<usize> {
    let step = |k: usize| chars[k] as i64 - chars[k - 1] as i64;
    if i == 0 || step(i).abs() > 1 {
        return None;
    }
    let d = step(i);
    Some((i..chars.len()).take_while(|&k| step(k) == d).count())
}

/// Characters examined: the estimate is quadratic in the length, and a secret whose first 256
/// characters are weak deserves the warning anyway.
const MAX_EXAMINED_CHARS: usize = 256;

/// The estimated entropy of `secret`, in bits (see the module docs for the rules).
pub fn estimated_bits(secret: &str) -> f64 {
    let chars: Vec<char> = secret.chars().take(MAX_EXAMINED_CHARS).collect();
    let per_char = pool_bits(&chars);
    let mut bits = 0.0;
    let mut i = 0;
    while i < chars.len() {
        let (cost, n) = if let Some(n) = word_at(&chars, i) {
            let cased = chars[i..i + n].iter().any(|c| c.is_ascii_uppercase());
            (WORD_BITS + if cased { 1.0 } else { 0.0 }, n)
        } else if let Some(n) = repeat_at(&chars, i) {
            // Where the copy starts and how long it is.
            ((i as f64).log2().max(1.0) + (n as f64).log2().max(1.0), n)
        } else if let Some(n) = run_at(&chars, i) {
            // Which of three steps, and how long the run is.
            (1.0 + (n as f64 + 1.0).log2(), n)
        } else {
            (per_char, 1)
        };
        bits += cost;
        i += n;
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_secrets_score_high_and_patterned_ones_low() {
        for strong in [
            "Vq7#pL2mX9tR4wKz",
            "k3J9vQx2Lr8Tz5Wd0Pq7Ys",
            "tq8mzv2kx7rp4wjc",
            "ZGIxNzNmYzBkYTk0NDE2ZmE3",
        ] {
            let b = estimated_bits(strong);
            assert!(b >= SECRET_MIN_BITS, "{strong}: {b}");
        }
        for weak in [
            "0123456789abcdef",
            "ABCDEFGHIJKLMNOP",
            "aaaaaaaaaaaaaaaaaaaaaaaa",
            "x".repeat(100_000).as_str(),
            "9876543210".repeat(30).as_str(),
            "your-shared-secret",
            "Password12345678",
            "abcabcabcabcabcabcabc",
            "8204710398476523",
            "hunter2hunter2hunter2",
            "qwertyuiopasdfgh",
        ] {
            let b = estimated_bits(weak);
            assert!(b < SECRET_MIN_BITS, "{weak}: {b}");
        }
    }

    #[test]
    fn the_estimate_grows_with_random_length_and_never_panics_on_odd_text() {
        assert_eq!(estimated_bits(""), 0.0);
        assert!(estimated_bits("tq8mzv2kx7rp4wjc") > estimated_bits("tq8mzv2k"));
        for odd in ["\u{0}\u{1}\u{ffff}", "ééééé", "🦀🦀🦀🦀🦀", "a\u{10ffff}z"] {
            assert!(estimated_bits(odd).is_finite());
        }
    }
}
