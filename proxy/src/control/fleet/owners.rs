//! Which members own a backend: rendezvous hashing, the same answer on every member
//! that sees the same live members, and a backend moves only when its owner leaves.

/// Rendezvous score of `node` for a backend address: the same on every member.
/// Pools naming the same address get the same owners, so one member's shared probe
/// serves them all.
pub fn score(node: &str, address: &str) -> u64 {
    // FNV-1a over the two names (separated), then a splitmix finish.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [node, address] {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The `copies` members of `live` that own the backend at `address`.
pub fn owners<'a>(live: &'a [String], copies: usize, address: &str) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = live
        .iter()
        .map(|n| (score(n, address), n.as_str()))
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().take(copies).map(|(_, n)| n).collect()
}

/// A member's set of backends, the same on every member that has the same set.
pub fn fingerprint(mut backends: Vec<(String, String)>) -> u64 {
    backends.sort_unstable();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (p, a) in &backends {
        for b in p.bytes().chain([0xff]).chain(a.bytes()).chain([0xfe]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn rendezvous_owners_are_stable_spread_and_move_only_from_a_leaving_member() {
        let three: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut count: HashMap<&str, usize> = HashMap::new();
        let backends: Vec<String> = (0..3000)
            .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250))
            .collect();
        for b in &backends {
            let o = owners(&three, 1, b);
            assert_eq!(o.len(), 1);
            *count.entry(o[0]).or_default() += 1;
        }
        for n in ["a", "b", "c"] {
            assert!((850..=1150).contains(&count[n]), "{count:?}");
        }
        // c leaves: only c's backends move.
        let two: Vec<String> = three[..2].to_vec();
        for b in &backends {
            let before = owners(&three, 1, b)[0];
            let after = owners(&two, 1, b)[0];
            if before != "c" {
                assert_eq!(before, after);
            }
        }
        // Two copies: two different owners.
        let o = owners(&three, 2, "x:1");
        assert_eq!(o.len(), 2);
        assert_ne!(o[0], o[1]);
        assert_eq!(owners(&three, 5, "x:1").len(), 3);
    }
}
