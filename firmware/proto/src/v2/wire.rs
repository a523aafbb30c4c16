//! Byte helpers shared by the version-2 codecs: header checks, fixed-size copies, appends. None
//! panics: every access is bounds-checked and a short input gives zeros, which the callers
//! rule out by checking lengths first.

use super::{Error, VERSION};

/// Checks the version byte, then the kind byte. The version comes first so that a frame of
/// another version is reported as such whatever its length.
pub(super) fn check_header(bytes: &[u8], kind: u8) -> Result<(), Error> {
    match bytes {
        [] => Err(Error::Empty),
        [v, ..] if *v != VERSION => Err(Error::UnsupportedVersion(*v)),
        [_] => Err(Error::BadLength {
            expected: 2,
            actual: 1,
        }),
        [_, k, ..] if *k != kind => Err(Error::WrongKind {
            expected: kind,
            found: *k,
        }),
        _ => Ok(()),
    }
}

/// Checks an exact length.
pub(super) fn check_len(bytes: &[u8], expected: usize) -> Result<(), Error> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(Error::BadLength {
            expected,
            actual: bytes.len(),
        })
    }
}

/// The first `N` bytes of `src` (zero-filled if it is shorter).
pub(super) fn copy<const N: usize>(src: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (dst, s) in out.iter_mut().zip(src) {
        *dst = *s;
    }
    out
}

/// `bytes[from..to]`, or nothing if out of range.
pub(super) fn field(bytes: &[u8], from: usize, to: usize) -> &[u8] {
    bytes.get(from..to).unwrap_or_default()
}

/// Writes `part` at `*at` in `out` and advances `*at`.
pub(super) fn put(out: &mut [u8], at: &mut usize, part: &[u8]) {
    for (dst, src) in out.iter_mut().skip(*at).zip(part) {
        *dst = *src;
    }
    *at += part.len();
}
