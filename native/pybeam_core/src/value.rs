//! The owned value type that crosses between the BEAM side and the Python side.
//!
//! Erlang terms are decoded into a `Value` on the caller's scheduler, travel to the loop thread
//! through the request queue, and become Python objects there. Python results travel back the
//! same way. Keeping this type free of both rustler and the GIL lets `cargo test` cover every
//! conversion rule.

use std::fmt;
use std::sync::Arc;

/// How deep a term may nest, in either direction. Deeper input is refused with
/// `{error, {too_deep, MAX_DEPTH}}` instead of exhausting a scheduler's or the loop's C stack.
pub const MAX_DEPTH: usize = 1000;

/// Bytes that live elsewhere (an Erlang refc binary, a Python `bytes`), kept alive by the holder,
/// so that a large binary is copied once on its way across, not twice.
pub trait SharedBytes: Send + Sync {
    fn as_slice(&self) -> &[u8];
}

/// A byte buffer: small ones are owned, large ones borrowed from their producer.
#[derive(Clone)]
pub enum Bytes {
    Owned(Vec<u8>),
    Shared(Arc<dyn SharedBytes>),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Shared(s) => s.as_slice(),
        }
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes::Owned(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes::Owned(v.to_vec())
    }
}

impl From<&str> for Bytes {
    fn from(v: &str) -> Self {
        Bytes::Owned(v.as_bytes().to_vec())
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_slice();
        if s.len() <= 64 {
            write!(f, "{:?}", String::from_utf8_lossy(s))
        } else {
            write!(f, "<{} bytes>", s.len())
        }
    }
}

/// One term, owned. Special atoms (`true`, `false`, `undefined`/`none`/`nil`, `nan`,
/// `infinity`, `neg_infinity`) are decoded to their own variants, never to `Atom`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    /// An integer outside i64: sign and little-endian magnitude.
    BigInt { negative: bool, magnitude: Vec<u8> },
    /// Finite when it comes from Erlang; NaN and ±inf from Python are encoded as atoms.
    Float(f64),
    Bool(bool),
    None,
    /// Any other atom, by name (UTF-8).
    Atom(String),
    /// An Erlang binary: a Python `str` when it is valid UTF-8, `bytes` otherwise.
    /// Python `str` results come back as this variant.
    Binary(Bytes),
    /// Always Python `bytes` (`{bytes, B}` from Erlang); Python `bytes` results come back as this.
    Bytes(Bytes),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Map(Vec<(Value, Value)>),
    /// A pid in the external term format, opaque to the core.
    Pid(Vec<u8>),
    /// A reference in the external term format, opaque to the core.
    Ref(Vec<u8>),
}

impl Value {
    pub fn binary(s: &str) -> Value {
        Value::Binary(Bytes::from(s))
    }

    pub fn atom(s: &str) -> Value {
        Value::Atom(s.to_owned())
    }

    /// Nesting depth: a scalar is 1.
    pub fn depth(&self) -> usize {
        match self {
            Value::List(items) | Value::Tuple(items) => {
                1 + items.iter().map(Value::depth).max().unwrap_or(0)
            }
            Value::Map(pairs) => {
                1 + pairs
                    .iter()
                    .map(|(k, v)| k.depth().max(v.depth()))
                    .max()
                    .unwrap_or(0)
            }
            _ => 1,
        }
    }
}

/// Reads a big integer's sign and magnitude from Erlang's external term format
/// (SMALL_BIG_EXT or LARGE_BIG_EXT, after the version byte).
pub fn bigint_from_etf(etf: &[u8]) -> Option<Value> {
    let body = etf.strip_prefix(&[131])?;
    let (n, rest) = match body.first()? {
        110 => (*body.get(1)? as usize, body.get(2..)?),
        111 => {
            let len = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?) as usize;
            (len, body.get(5..)?)
        }
        _ => return None,
    };
    let negative = *rest.first()? != 0;
    let magnitude = rest.get(1..1 + n)?.to_vec();
    Some(Value::BigInt { negative, magnitude })
}

/// Writes a big integer in the external term format, for `binary_to_term` on the BEAM side.
pub fn bigint_to_etf(negative: bool, magnitude: &[u8]) -> Vec<u8> {
    let mut digits = magnitude.to_vec();
    while digits.len() > 1 && digits.last() == Some(&0) {
        digits.pop();
    }
    let mut out = Vec::with_capacity(digits.len() + 7);
    out.push(131);
    if digits.len() < 256 {
        out.push(110);
        out.push(digits.len() as u8);
    } else {
        out.push(111);
        out.extend_from_slice(&(digits.len() as u32).to_be_bytes());
    }
    out.push(u8::from(negative));
    out.extend_from_slice(&digits);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_nesting() {
        assert_eq!(Value::Int(1).depth(), 1);
        let nested = Value::List(vec![Value::Tuple(vec![Value::Int(1)]), Value::Int(2)]);
        assert_eq!(nested.depth(), 3);
        assert_eq!(Value::Map(vec![]).depth(), 1);
    }

    #[test]
    fn bigint_etf_roundtrip_small_and_large() {
        for n in [9usize, 255, 256, 4000] {
            let magnitude: Vec<u8> = (0..n).map(|i| (i % 251) as u8 + 1).collect();
            let etf = bigint_to_etf(true, &magnitude);
            assert_eq!(
                bigint_from_etf(&etf),
                Some(Value::BigInt { negative: true, magnitude: magnitude.clone() })
            );
        }
    }

    #[test]
    fn bigint_etf_rejects_other_tags() {
        assert_eq!(bigint_from_etf(&[131, 97, 5]), None);
        assert_eq!(bigint_from_etf(&[131, 110]), None);
        assert_eq!(bigint_from_etf(&[]), None);
    }

    #[test]
    fn bigint_etf_trims_leading_zero_digits() {
        let etf = bigint_to_etf(false, &[1, 0, 0]);
        assert_eq!(etf, vec![131, 110, 1, 0, 1]);
    }
}
