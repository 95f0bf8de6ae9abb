//! Bencode: parsing with bendy (strict, canonical), writing with a small canonical writer.
//!
//! Parsing keeps the raw bytes of every list and dictionary, so a BEP44 `v` is hashed and signed
//! exactly as it arrived. Writing sorts dictionary keys and splices already-encoded values
//! verbatim (a stored `v`, a plugin's result dictionary), which is why it is not bendy's encoder:
//! that one cannot splice raw bytes.

use bendy::decoding::{Decoder, Object};

/// Deepest nesting accepted in anything a peer sends (KRPC itself needs 3 levels; a BEP44 `v`
/// may nest a little more).
pub const MAX_DEPTH: usize = 32;

/// A parsed bencode value borrowing the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val<'a> {
    /// A byte string.
    Bytes(&'a [u8]),
    /// An integer (bencode allows any size; we accept what fits an `i64`).
    Int(i64),
    /// A list and its raw bytes.
    List(Vec<Self>, &'a [u8]),
    /// A dictionary (keys in the order received, which bendy checks is sorted) and its raw bytes.
    Dict(Vec<(&'a [u8], Self)>, &'a [u8]),
}

/// Why bytes are not one canonical bencode value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad bencode: {0}")]
pub struct BencodeError(pub String);

impl<'a> Val<'a> {
    /// The value as a byte string.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match self {
            Self::Bytes(b) => Some(b),
            _ => None,
        }
    }
    /// The value as an integer.
    pub fn int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// The value as a dictionary's entries.
    pub fn dict(&self) -> Option<&[(&'a [u8], Self)]> {
        match self {
            Self::Dict(d, _) => Some(d),
            _ => None,
        }
    }
    /// The value as a list's items.
    pub fn list(&self) -> Option<&[Self]> {
        match self {
            Self::List(l, _) => Some(l),
            _ => None,
        }
    }
    /// Looks a key up in a dictionary value.
    pub fn get(&self, key: &[u8]) -> Option<&Self> {
        self.dict()?.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// Parses exactly one value filling all of `input` (trailing bytes are an error).
pub fn parse(input: &[u8]) -> Result<Val<'_>, BencodeError> {
    let mut dec = Decoder::new(input).with_max_depth(MAX_DEPTH);
    let val = match dec.next_object().map_err(err)? {
        Some(obj) => convert(obj)?,
        None => return Err(BencodeError("empty input".into())),
    };
    match dec.next_object() {
        Ok(None) => Ok(val),
        Ok(Some(_)) => Err(BencodeError("trailing data".into())),
        Err(e) => Err(err(e)),
    }
}

fn err(e: bendy::decoding::Error) -> BencodeError {
    BencodeError(e.to_string())
}

fn convert<'ser>(obj: Object<'_, 'ser>) -> Result<Val<'ser>, BencodeError> {
    Ok(match obj {
        Object::Bytes(b) => Val::Bytes(b),
        Object::Integer(s) => Val::Int(
            s.parse::<i64>()
                .map_err(|_| BencodeError(format!("integer out of range: {s}")))?,
        ),
        Object::List(mut l) => {
            let mut items = Vec::new();
            while let Some(o) = l.next_object().map_err(err)? {
                items.push(convert(o)?);
            }
            let raw = l.into_raw().map_err(err)?;
            Val::List(items, raw)
        }
        Object::Dict(mut d) => {
            let mut items = Vec::new();
            while let Some((k, o)) = d.next_pair().map_err(err)? {
                items.push((k, convert(o)?));
            }
            let raw = d.into_raw().map_err(err)?;
            Val::Dict(items, raw)
        }
    })
}

/// Appends a byte string.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_usize(out, b.len());
    out.push(b':');
    out.extend_from_slice(b);
}

/// Appends an integer.
pub fn put_int(out: &mut Vec<u8>, i: i64) {
    out.push(b'i');
    if i < 0 {
        out.push(b'-');
    }
    put_usize_u64(out, i.unsigned_abs());
    out.push(b'e');
}

fn put_usize(out: &mut Vec<u8>, n: usize) {
    put_usize_u64(out, n as u64);
}

/// Decimal digits without a heap allocation.
fn put_usize_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// A dictionary being built: pairs of key and already-encoded value, written sorted. Keys and
/// values live in one buffer (two allocations per dictionary, not two per entry).
#[derive(Debug, Default)]
pub struct Dict {
    buf: Vec<u8>,
    pairs: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl Dict {
    /// An empty dictionary.
    pub fn new() -> Self {
        Self::default()
    }
    fn remove(&mut self, key: &[u8]) {
        let buf = &self.buf;
        self.pairs.retain(|(k, _)| &buf[k.clone()] != key);
    }
    fn push_with(&mut self, key: &[u8], write: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        self.remove(key);
        let k0 = self.buf.len();
        self.buf.extend_from_slice(key);
        let v0 = self.buf.len();
        write(&mut self.buf);
        self.pairs.push((k0..v0, v0..self.buf.len()));
        self
    }
    /// Sets `key` to an already-encoded value (replacing an earlier one).
    pub fn raw(&mut self, key: &[u8], encoded: &[u8]) -> &mut Self {
        self.push_with(key, |b| b.extend_from_slice(encoded))
    }
    /// Sets `key` to a byte string.
    pub fn bytes(&mut self, key: &[u8], b: &[u8]) -> &mut Self {
        self.push_with(key, |out| put_bytes(out, b))
    }
    /// Sets `key` to an integer.
    pub fn int(&mut self, key: &[u8], i: i64) -> &mut Self {
        self.push_with(key, |out| put_int(out, i))
    }
    /// Sets `key` to a list of byte strings.
    pub fn bytes_list<'b>(
        &mut self,
        key: &[u8],
        items: impl IntoIterator<Item = &'b [u8]>,
    ) -> &mut Self {
        self.push_with(key, |out| {
            out.push(b'l');
            for b in items {
                put_bytes(out, b);
            }
            out.push(b'e');
        })
    }
    /// Whether `key` is set.
    pub fn has(&self, key: &[u8]) -> bool {
        self.pairs.iter().any(|(k, _)| &self.buf[k.clone()] == key)
    }
    /// Copies every entry of an encoded dictionary (keys already present are replaced).
    pub fn merge_encoded(&mut self, dict: &[u8]) -> Result<&mut Self, BencodeError> {
        if dict.is_empty() || dict == b"de" {
            return Ok(self);
        }
        let v = parse(dict)?;
        let Val::Dict(items, _) = v else {
            return Err(BencodeError("not a dictionary".into()));
        };
        for (k, val) in items {
            self.push_with(k, |out| write_val(out, &val));
        }
        Ok(self)
    }
    /// Writes the dictionary, keys sorted by raw bytes.
    pub fn write(mut self, out: &mut Vec<u8>) {
        let buf = &self.buf;
        self.pairs
            .sort_unstable_by(|a, b| buf[a.0.clone()].cmp(&buf[b.0.clone()]));
        out.reserve(self.buf.len() + self.pairs.len() * 4 + 2);
        out.push(b'd');
        for (k, v) in &self.pairs {
            put_bytes(out, &buf[k.clone()]);
            out.extend_from_slice(&buf[v.clone()]);
        }
        out.push(b'e');
    }
    /// The encoded dictionary.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }
}

fn write_val(out: &mut Vec<u8>, v: &Val<'_>) {
    match v {
        Val::List(_, raw) | Val::Dict(_, raw) => out.extend_from_slice(raw),
        Val::Bytes(b) => put_bytes(out, b),
        Val::Int(i) => put_int(out, *i),
    }
}

/// The encoded bytes of a parsed value (lists and dicts keep theirs; scalars are re-encoded,
/// which is exact because bendy only accepts canonical scalars).
pub fn raw_of(v: &Val<'_>) -> Vec<u8> {
    let mut o = Vec::new();
    write_val(&mut o, v);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_raw_bytes_and_rejects_non_canonical_input() {
        let v = parse(b"d1:ad2:id2:xye1:vli1e3:abcee").unwrap();
        assert_eq!(v.get(b"v").unwrap().list().unwrap().len(), 2);
        match v.get(b"a").unwrap() {
            Val::Dict(_, raw) => assert_eq!(*raw, b"d2:id2:xye"),
            other => panic!("{other:?}"),
        }
        for bad in [
            &b"d1:bi1e1:ai2ee"[..], // unsorted keys
            b"d1:ai1e1:ai2ee",      // duplicate key
            b"i01e",                // leading zero
            b"i-0e",                // negative zero
            b"5:abc",               // short string
            b"i1ei2e",              // trailing data
            b"",
            b"i99999999999999999999e", // out of range
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = format!("{}{}", "l".repeat(MAX_DEPTH + 2), "e".repeat(MAX_DEPTH + 2));
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn writes_sorted_dictionaries_and_splices_raw_values() {
        let mut d = Dict::new();
        d.int(b"seq", 4).bytes(b"id", b"ab").raw(b"v", b"li1ee");
        d.merge_encoded(b"d1:xi9ee").unwrap();
        assert_eq!(d.finish(), b"d2:id2:ab3:seqi4e1:vli1ee1:xi9ee");
    }
}
