//! Frame layouts. Every frame starts with the protocol version and a kind byte; all integers
//! are big-endian.

pub(crate) mod auth;
pub(crate) mod challenge;
pub(crate) mod result;

use crate::{Error, PROTOCOL_VERSION};

/// Checks the two header bytes shared by all frames.
///
/// The version is checked before anything else, so that a frame from a newer protocol is
/// reported as [`Error::UnsupportedVersion`] whatever its length.
fn check_header(frame: &[u8], kind: u8, min_len: usize) -> Result<(), Error> {
    let (&version, rest) = frame.split_first().ok_or(Error::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let &found = rest.first().ok_or(Error::Truncated {
        expected: min_len,
        actual: frame.len(),
    })?;
    if found != kind {
        return Err(Error::WrongKind {
            expected: kind,
            found,
        });
    }
    Ok(())
}

/// Checks that a frame is exactly `expected` bytes long.
fn check_len(frame: &[u8], expected: usize) -> Result<(), Error> {
    let actual = frame.len();
    if actual < expected {
        Err(Error::Truncated { expected, actual })
    } else if actual > expected {
        Err(Error::TrailingBytes { expected, actual })
    } else {
        Ok(())
    }
}

/// Reads fields in order from a frame whose length has already been checked. Every read is
/// still bounds-checked and fails with [`Error::Truncated`] rather than panicking.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], pos: usize) -> Self {
        Reader { buf, pos }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).ok_or(Error::Truncated {
            expected: usize::MAX,
            actual: self.buf.len(),
        })?;
        let bytes = self.buf.get(self.pos..end).ok_or(Error::Truncated {
            expected: end,
            actual: self.buf.len(),
        })?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

/// Writes fields in order into an output buffer whose size has already been checked.
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// Fails with [`Error::BufferTooSmall`] unless `buf` holds at least `len` bytes.
    fn new(buf: &'a mut [u8], len: usize) -> Result<Self, Error> {
        if buf.len() < len {
            return Err(Error::BufferTooSmall {
                needed: len,
                available: buf.len(),
            });
        }
        Ok(Writer { buf, pos: 0 })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let available = self.buf.len();
        let end = self.pos.saturating_add(bytes.len());
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(Error::BufferTooSmall {
                needed: end,
                available,
            })?;
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    /// The bytes written so far.
    fn written(&self) -> &[u8] {
        self.buf.get(..self.pos).unwrap_or_default()
    }

    fn len(&self) -> usize {
        self.pos
    }
}
