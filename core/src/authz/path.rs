//! Request path normalisation, shared by the waypoint's routing and its authorization so both
//! judge the same path: a policy on `/admin*` must not be bypassed by `/a/../admin`,
//! `//admin`, `/%61dmin` or `/x%2F..%2Fadmin`, which a backend may well resolve to `/admin`.
//!
//! This is Envoy's strictest standard setting as Istio offers it (`DECODE_AND_MERGE_SLASHES`):
//! decode escaped slashes and backslashes, decode escaped unreserved characters, merge slashes,
//! remove dot segments. Anything that cannot be normalised unambiguously is refused; the
//! waypoint answers 400.

/// Why a request path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must not be empty")]
    Empty,
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("invalid percent escape at byte {at}: `%` must be followed by two hex digits")]
    InvalidEscape { at: usize },
    #[error("control character (0x{byte:02X}) at byte {at}, raw or percent-encoded")]
    ControlCharacter { at: usize, byte: u8 },
    #[error(
        "a dot segment with parameters (`..;x`, `.;x`): servers that strip `;` parameters would resolve it"
    )]
    DotSegmentParameter,
}

/// Normalises the path part of a request target (the caller has split off the query at the
/// first `?`):
///
/// 1. it must start with `/`;
/// 2. `%2F`, `%5C` (any case) and a raw `\` become `/` (Envoy's `UNESCAPE_AND_MERGE` for
///    slashes: backends disagree on whether `%2F` separates segments, so it always does here);
/// 3. escapes of unreserved characters (ALPHA, DIGIT, `-._~`) are decoded (RFC 3986 6.2.2.2);
///    other escapes are kept, with upper-case hex digits (6.2.2.1), so `%3F` stays `%3F` and
///    `%25` is never decoded twice;
/// 4. runs of `/` are merged into one;
/// 5. dot segments are removed (RFC 3986 5.2.4), after decoding, so `%2e%2e` is `..` when it
///    is a whole segment; `..` above the root stays at the root.
///
/// A trailing `/` is kept (`/a/` and `/a` may be different resources), and a path ending in a
/// dot segment gets one (`/a/b/..` is `/a/`), as RFC 3986 resolves it.
///
/// Refused: a dot segment carrying `;` parameters, a path not starting with `/`, a `%` not followed by two hex digits, and control
/// characters (0x00-0x1F, 0x7F), raw or escaped: backends that decode `%00` or `%0A` would see
/// a different path (or header) than the policy did.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    match raw.as_bytes().first() {
        None => return Err(PathError::Empty),
        Some(b'/') => {}
        Some(_) => return Err(PathError::NotAbsolute),
    }
    let decoded = decode(raw)?;
    // Tomcat and Spring drop `;` parameters and then resolve dots: `/public/..;/admin` is
    // `/admin` to them and `/public/..;/admin` to anyone else.
    let dotted = |seg: &str| matches!(seg.split(';').next(), Some("." | ".."));
    if decoded
        .split('/')
        .any(|seg| seg.contains(';') && dotted(seg))
    {
        return Err(PathError::DotSegmentParameter);
    }
    Ok(remove_dot_segments(&decoded))
}

/// Steps 2 and 3. The output is ASCII wherever the input was, and valid UTF-8 throughout: only
/// ASCII bytes are produced by decoding, other bytes are copied.
fn decode(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = |k: usize| bytes.get(i + k).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hex(1), hex(2)) else {
                return Err(PathError::InvalidEscape { at: i });
            };
            let byte = (hi << 4) | lo;
            if byte.is_ascii_control() {
                return Err(PathError::ControlCharacter { at: i, byte });
            }
            match byte {
                b'/' | b'\\' => out.push('/'),
                b if is_unreserved(b) => out.push(char::from(b)),
                _ => {
                    out.push('%');
                    out.push(upper_hex(hi));
                    out.push(upper_hex(lo));
                }
            }
            i += 3;
            continue;
        }
        if b.is_ascii_control() {
            return Err(PathError::ControlCharacter { at: i, byte: b });
        }
        // Copy the whole character, so multi-byte UTF-8 (not valid in a request target, but a
        // `&str` may hold it) passes through intact.
        let Some(c) = raw.get(i..).and_then(|rest| rest.chars().next()) else {
            break; // unreachable: `i` is always at a character boundary
        };
        out.push(if c == '\\' { '/' } else { c });
        i += c.len_utf8();
    }
    Ok(out)
}

/// Steps 4 and 5 on a decoded path that starts with `/`. Empty segments (from `//`) are
/// dropped, which is the merge; `.` is dropped and `..` drops the segment before it.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    // `path` starts with `/`, so the first piece is always empty and skipped.
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                kept.pop();
                trailing_slash = true;
            }
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn upper_hex(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16)
        .map(|c| c.to_ascii_uppercase())
        .unwrap_or('0') // unreachable: a nibble is below 16
}

/// RFC 3986 2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> String {
        match normalize_path(raw) {
            Ok(p) => p,
            Err(e) => panic!("{raw:?}: {e}"),
        }
    }

    #[test]
    fn path_dot_segments() {
        assert_eq!(norm("/a/../admin"), "/admin");
        assert_eq!(norm("/a/./b"), "/a/b");
        assert_eq!(norm("/a/b/../../.."), "/");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("/."), "/");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a/."), "/a/");
        assert_eq!(norm("/../../admin"), "/admin");
        // Dots inside a segment are not dot segments.
        assert_eq!(norm("/a/..b/.c/..."), "/a/..b/.c/...");
        // Parameters on a dot segment are refused; elsewhere they are the application's.
        for p in ["/public/..;/admin", "/a/.;x/b", "/%2e%2e;/admin"] {
            assert_eq!(
                normalize_path(p),
                Err(PathError::DotSegmentParameter),
                "{p}"
            );
        }
        assert_eq!(norm("/a;v=1/b"), "/a;v=1/b");
    }

    #[test]
    fn path_slashes_merge_and_trailing_slash_is_kept() {
        assert_eq!(norm("/"), "/");
        assert_eq!(norm("//admin"), "/admin");
        assert_eq!(norm("/a///b//"), "/a/b/");
        assert_eq!(norm("/a/"), "/a/");
        assert_eq!(norm("/a"), "/a");
        // Merged before dot segments: the `..` drops `a`, not an empty segment.
        assert_eq!(norm("/a//../b"), "/b");
    }

    #[test]
    fn path_escaped_slashes_and_backslashes_are_slashes() {
        assert_eq!(norm("/a%2Fadmin"), "/a/admin");
        assert_eq!(norm("/a%2fadmin"), "/a/admin");
        assert_eq!(norm("/a%5Cadmin"), "/a/admin");
        assert_eq!(norm("/a%5cadmin"), "/a/admin");
        assert_eq!(norm("/a\\admin"), "/a/admin");
        assert_eq!(norm("/x%2F..%2Fadmin"), "/admin");
        assert_eq!(norm("/x\\..\\admin"), "/admin");
    }

    #[test]
    fn path_unreserved_escapes_are_decoded_others_uppercased() {
        assert_eq!(norm("/%61dmin"), "/admin");
        assert_eq!(norm("/%41%7e%2D%5f"), "/A~-_");
        assert_eq!(norm("/a%3fb"), "/a%3Fb");
        assert_eq!(norm("/a%20b"), "/a%20b");
        // `%25` is `%` and stays encoded: no double decoding into `%61`.
        assert_eq!(norm("/%2561dmin"), "/%2561dmin");
        assert_eq!(norm("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(norm("/café"), "/café");
    }

    #[test]
    fn path_encoded_dots_are_dot_segments_only_when_whole() {
        assert_eq!(norm("/a/%2e%2e/admin"), "/admin");
        assert_eq!(norm("/a/%2E/b"), "/a/b");
        assert_eq!(norm("/a/.%2e/admin"), "/admin");
        // `admin..` is an ordinary segment.
        assert_eq!(norm("/admin%2e%2e/x"), "/admin../x");
    }

    #[test]
    fn path_refuses_what_cannot_be_normalised() {
        assert_eq!(normalize_path(""), Err(PathError::Empty));
        assert_eq!(normalize_path("admin"), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("*"), Err(PathError::NotAbsolute));
        assert_eq!(
            normalize_path("/a%zz"),
            Err(PathError::InvalidEscape { at: 2 })
        );
        assert_eq!(
            normalize_path("/a%4"),
            Err(PathError::InvalidEscape { at: 2 })
        );
        assert_eq!(
            normalize_path("/a%"),
            Err(PathError::InvalidEscape { at: 2 })
        );
        assert_eq!(
            normalize_path("/a%00"),
            Err(PathError::ControlCharacter { at: 2, byte: 0 })
        );
        assert_eq!(
            normalize_path("/a\0b"),
            Err(PathError::ControlCharacter { at: 2, byte: 0 })
        );
        assert_eq!(
            normalize_path("/a%0Ab"),
            Err(PathError::ControlCharacter { at: 2, byte: 0x0A })
        );
        assert_eq!(
            normalize_path("/a\x7f"),
            Err(PathError::ControlCharacter { at: 2, byte: 0x7F })
        );
        let msg = normalize_path("/%zz").unwrap_err().to_string();
        assert!(msg.contains("percent escape"), "{msg}");
    }
}
