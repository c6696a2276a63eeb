//! The bytes of a cache entry: a small length-prefixed encoding whose
//! reader never trusts a length it has not checked against what is left.

/// Appends fields.
#[derive(Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v);
    }
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    /// A count of items that follow, each at least one byte long.
    pub fn count(&mut self, n: usize) {
        self.u64(n as u64);
    }
}

/// Reads fields back; every read is `None` once anything is wrong, so a
/// damaged entry is just a miss.
pub struct Dec<'a> {
    data: &'a [u8],
}

impl<'a> Dec<'a> {
    pub fn new(data: &'a [u8]) -> Dec<'a> {
        Dec { data }
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.data.len() {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }
    pub fn str(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    /// A count written by [`Enc::count`]: never more than bytes are left,
    /// so a damaged count cannot make the reader allocate much.
    pub fn count(&mut self) -> Option<usize> {
        let n = usize::try_from(self.u64()?).ok()?;
        (n <= self.data.len()).then_some(n)
    }
    /// Whether every byte was read.
    pub fn is_done(&self) -> bool {
        self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_short_input_fails() {
        let mut e = Enc::default();
        e.u8(7);
        e.u32(0xdead_beef);
        e.i64(-5);
        e.bool(true);
        e.str("etc/passwd");
        e.count(2);
        let bytes = e.0;
        let mut d = Dec::new(&bytes);
        assert_eq!(d.u8(), Some(7));
        assert_eq!(d.u32(), Some(0xdead_beef));
        assert_eq!(d.i64(), Some(-5));
        assert_eq!(d.bool(), Some(true));
        assert_eq!(d.str().as_deref(), Some("etc/passwd"));
        assert_eq!(d.count(), None, "2 items but no bytes left");
        let mut short = Dec::new(&bytes[..14]);
        short.u8();
        short.u32();
        short.i64();
        assert_eq!(short.bool(), Some(true));
        assert_eq!(short.str(), None);
    }
}
