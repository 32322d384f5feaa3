//! Request paths as routing sees them (contract §5, "Paths"): normalized before a pool
//! is chosen, so that routing used as access control sees the path the backend will
//! see. `GET /public/../internal/x` is routed, and sent, as `/internal/x`.
//!
//! In order (RFC 3986 §6.2.2): percent-encoded unreserved characters are decoded (`%2e`
//! is `.`, `%7E` is `~`) and other percent-encodings upper-cased; empty segments are
//! merged (`//` is `/`); dot-segments are removed (§5.2.4). `%2F` and `%5C` stay
//! encoded — an encoded slash is part of a segment, as some APIs need — but a segment
//! that would be a dot-segment once they are decoded (`..%2F..`) is refused: a backend
//! that decodes them would resolve what routing never saw. A path that cannot be
//! normalized (a dot-segment above the root, a `%` not followed by two hex digits) is
//! refused with 400. The query is left as it is.

use std::borrow::Cow;

/// Why a path cannot be normalized: the 400's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// A dot-segment that would climb above `/`.
    AboveRoot,
    /// `..` or `.` behind an encoded slash (`..%2F..`).
    HiddenDotSegment,
    /// A `%` not followed by two hex digits, or bytes that are no path.
    Malformed,
}

impl Invalid {
    /// The JSON body of its 400, the same on every protocol.
    pub fn body(self) -> &'static str {
        match self {
            Invalid::AboveRoot => r#"{"error":"path above the root"}"#,
            Invalid::HiddenDotSegment => r#"{"error":"encoded slash in a dot-segment"}"#,
            Invalid::Malformed => r#"{"error":"invalid path"}"#,
        }
    }
}

/// The normalized form of `path` (the target without its query); borrowed when it is
/// already normal, which is the usual case and costs one scan.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Invalid> {
    // Not origin-form (`*`, an authority): nothing routing reads as a path.
    if !path.starts_with('/') || !needs_work(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path.as_bytes())?;
    let ends_in_dir = {
        let last = decoded.rsplit(|&b| b == b'/').next().unwrap_or_default();
        matches!(last, b"" | b"." | b"..")
    };
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                if segments.pop().is_none() {
                    return Err(Invalid::AboveRoot);
                }
            }
            s if hides_dot_segment(s) => return Err(Invalid::HiddenDotSegment),
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if ends_in_dir || segments.is_empty() {
        out.push(b'/');
    }
    // Only ASCII was written or kept (decoding yields unreserved ASCII alone).
    let out = String::from_utf8(out).map_err(|_| Invalid::Malformed)?;
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

/// Whether `path` may change: it has a `%`, an empty segment or one starting with `.`.
fn needs_work(path: &[u8]) -> bool {
    path.windows(2).any(|w| w == b"//" || w == b"/.") || path.contains(&b'%')
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes `%XX` of unreserved characters; upper-cases the hex of the others.
fn decode_unreserved(path: &[u8]) -> Result<Vec<u8>, Invalid> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            path.get(i + 1).copied().and_then(hex),
            path.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(Invalid::Malformed);
        };
        let value = hi << 4 | lo;
        if unreserved(value) {
            out.push(value);
        } else {
            out.push(b'%');
            out.push(path[i + 1].to_ascii_uppercase());
            out.push(path[i + 2].to_ascii_uppercase());
        }
        i += 3;
    }
    Ok(out)
}

/// A segment with `%2F` or `%5C` that holds a `.` or `..` once they are decoded.
fn hides_dot_segment(segment: &[u8]) -> bool {
    if !segment.contains(&b'%') {
        return false;
    }
    let text = String::from_utf8_lossy(segment)
        .replace("%2F", "/")
        .replace("%5C", "/");
    text.split('/').any(|s| s == "." || s == "..")
}

/// `target` (path and query) with its path normalized: borrowed when unchanged.
pub fn normalize_target(target: &str) -> Result<Cow<'_, str>, Invalid> {
    let (path, query) = match target.find('?') {
        Some(i) => target.split_at(i),
        None => (target, ""),
    };
    Ok(match normalize(path)? {
        Cow::Borrowed(_) => Cow::Borrowed(target),
        Cow::Owned(mut p) => {
            p.push_str(query);
            Cow::Owned(p)
        }
    })
}

/// `host` of `host:port`, `[v6]:port` or a bare host (a colon not followed by a port
/// only is part of the host).
pub fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    address
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(address, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(p: &str) -> Result<String, Invalid> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_slashes_and_encodings() {
        for (raw, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/.well-known/x", "/.well-known/x"),
            ("/public/../internal/x", "/internal/x"),
            ("/public/%2e%2e/internal/x", "/internal/x"),
            ("/public/%2E%2e/internal/x", "/internal/x"),
            ("/a/./b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("//a///b", "/a/b"),
            ("/a//", "/a/"),
            ("/..a/b..", "/..a/b.."),
            ("/%7euser/%41", "/~user/A"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%20b%c3%a9", "/a%20b%C3%A9"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("*", "*"),
        ] {
            assert_eq!(n(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn what_cannot_be_normalized_is_refused() {
        for raw in [
            "/..",
            "/a/../..",
            "/%2e%2e/x",
            "/a/%zz",
            "/a/%4",
            "/a/%",
            "/a/..%2F..%2Fetc",
            "/a/%2E%2E%5Cx",
        ] {
            assert!(n(raw).is_err(), "{raw} accepted as {:?}", n(raw));
        }
    }

    #[test]
    fn query_is_kept_and_unchanged_targets_are_borrowed() {
        assert_eq!(normalize_target("/a/../b?x=/../y").unwrap(), "/b?x=/../y");
        assert!(matches!(normalize_target("/a/b?c"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize_target("/a/%41"), Ok(Cow::Owned(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Normal paths have no empty or dot segment, no encoded unreserved byte, and
        /// normalizing them again changes nothing.
        #[test]
        fn normal_paths_are_normal(parts in proptest::collection::vec(
            prop_oneof!["", "\\.", "\\.\\.", "%2[eE]", "%2[eE]%2[eE]", "[a-z]{1,3}", "%41", "%2[fF]", "%zz"], 0..8)
        ) {
            let path = format!("/{}", parts.join("/"));
            if let Ok(p) = normalize(&path) {
                prop_assert!(p.starts_with('/'));
                prop_assert!(!p.contains("//"), "{path} -> {p}");
                prop_assert!(!p.split('/').any(|s| s == "." || s == ".."), "{path} -> {p}");
                prop_assert!(!p.contains("%2E") && !p.contains("%41"), "{path} -> {p}");
                let again = n(&p).unwrap();
                prop_assert_eq!(&again, &*p);
            }
        }
    }
}
