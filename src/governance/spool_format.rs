//! The ledger spool's record format: how one ledger row ([`RowValues`]) is laid out in a spool
//! segment, and how a segment's bytes are read back as rows.
//!
//! A row was a JSON line; writing it on the worker and parsing it on the ledger thread cost
//! about as much as the rest of the spool together (`loadtests/README.md`). A record is the
//! row's fields in a fixed order, integers little-endian and strings length-prefixed, framed
//! by a marker byte, a length and a CRC-32, so that a record a crash tore (a copy into the
//! mapping cut short: a prefix written, zeros after, or any other subset of its bytes) is told
//! from a whole one and skipped; its strings are borrowed from the segment on reading.
//!
//! ```text
//! record   = MARK (1) | n: body length (u32) | body (n) | CRC-32 of MARK, n and body (u32)
//! body     = ints (3 × i64) | present (u8, bit i: optional_text[i])
//!          | present (u8, bit i: optional_ints[i]) | optional_ints (6 × i64, absent as 0)
//!          | string lengths (11 × u32: text[0..9], optional_text[0..2], absent as 0)
//!          | the strings' bytes, in that order
//! ```
//!
//! A segment is read from a record's start (its mark in `ledger_spool`) to its written end: a
//! zero byte where a record would start is the segment's zero tail ("nothing more"; a tail
//! that is not all zeros is one torn record), and a record that fails its checks ends the read
//! as one torn record (past it no byte can be trusted to start a record; a crash tears only
//! the last one, the writers copying one at a time under the spool's lock). A segment an older
//! gateway left holds JSON lines, which always start with `{`, never [`MARK`]: [`is_json`]
//! tells them apart and the ledger loads those line by line as before. This module owns the
//! bytes only; the files are `governance::spool`'s, the loading `governance::ledger`'s.

use super::ledger::RowValues;

/// A record's first byte: neither `{` (a JSON line's) nor 0 (a segment's zero tail).
pub(crate) const MARK: u8 = 0xB5;

/// Bytes before the body: [`MARK`] and the body's length.
const HEAD: usize = 1 + 4;
/// Bytes after the body: the CRC-32.
const CHECK: usize = 4;
/// Strings in a row: 9 always there, 2 optional.
const STRINGS: usize = 11;
/// The body's fixed part: the 3 integers, 2 presence bytes, 6 optional integers, 11 lengths.
const FIXED: usize = 3 * 8 + 2 + 6 * 8 + STRINGS * 4;

/// Whether `segment` (its bytes from the start) holds JSON lines (an older gateway's).
pub(crate) fn is_json(segment: &[u8]) -> bool {
    segment.first() == Some(&b'{')
}

/// Appends `row` to `out` as one record.
pub(crate) fn encode<S: AsRef<str>>(row: &RowValues<S>, out: &mut Vec<u8>) {
    let strings = strings(row);
    let text_bytes: usize = strings.iter().map(|s| s.len()).sum();
    let body = FIXED + text_bytes;
    let start = out.len();
    out.reserve(HEAD + body + CHECK);
    out.push(MARK);
    // A row's strings are names, ids and a decimal: never 4 GiB.
    out.extend_from_slice(&u32::try_from(body).unwrap_or(u32::MAX).to_le_bytes());
    for int in row.ints {
        out.extend_from_slice(&int.to_le_bytes());
    }
    let bits = |present: &mut dyn Iterator<Item = bool>| {
        present
            .enumerate()
            .fold(0u8, |bits, (i, p)| bits | (u8::from(p) << i))
    };
    out.push(bits(&mut row.optional_text.iter().map(Option::is_some)));
    out.push(bits(&mut row.optional_ints.iter().map(Option::is_some)));
    for int in row.optional_ints {
        out.extend_from_slice(&int.unwrap_or(0).to_le_bytes());
    }
    for s in &strings {
        out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
    }
    for s in &strings {
        out.extend_from_slice(s.as_bytes());
    }
    let check = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&check.to_le_bytes());
}

/// The row's strings in record order, an absent one as `""`.
fn strings<S: AsRef<str>>(row: &RowValues<S>) -> [&str; STRINGS] {
    let mut out = [""; STRINGS];
    for (slot, s) in out.iter_mut().zip(&row.text) {
        *slot = s.as_ref();
    }
    for (slot, s) in out[9..].iter_mut().zip(&row.optional_text) {
        *slot = s.as_ref().map_or("", AsRef::as_ref);
    }
    out
}

/// The rows of a segment's bytes from a record's start to its written end, in order, their
/// strings borrowed from it. Once it has ended, [`Records::torn`] says whether it met a torn
/// record (at most one: the read ends there).
#[derive(Debug)]
pub(crate) struct Records<'a> {
    rest: &'a [u8],
    torn: usize,
}

impl<'a> Records<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self {
            rest: bytes,
            torn: 0,
        }
    }

    /// Torn records met so far (0 or 1).
    pub(crate) fn torn(&self) -> usize {
        self.torn
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = RowValues<&'a str>;

    fn next(&mut self) -> Option<Self::Item> {
        let first = *self.rest.first()?;
        let rest = std::mem::take(&mut self.rest);
        if first == 0 {
            // The zero tail; a record torn before its first byte landed shows past it.
            self.torn += usize::from(rest.iter().any(|b| *b != 0));
            return None;
        }
        match decode(rest) {
            Some((row, len)) => {
                self.rest = &rest[len..];
                Some(row)
            }
            None => {
                self.torn += 1;
                None
            }
        }
    }
}

/// The record at the start of `bytes` and its length, `None` if it is not a whole one.
fn decode(bytes: &[u8]) -> Option<(RowValues<&str>, usize)> {
    if bytes.len() < HEAD || bytes[0] != MARK {
        return None;
    }
    let body = usize::try_from(u32_at(bytes, 1)).ok()?;
    let len = HEAD.checked_add(body)?.checked_add(CHECK)?;
    if body < FIXED || bytes.len() < len {
        return None;
    }
    let (framed, check) = bytes[..len].split_at(HEAD + body);
    if crc32fast::hash(framed) != u32_at(check, 0) {
        return None;
    }
    let body = &framed[HEAD..];
    let i64_at = |at: usize| i64::from_le_bytes(body[at..at + 8].try_into().unwrap_or_default());
    let ints = [i64_at(0), i64_at(8), i64_at(16)];
    let (text_present, int_present) = (body[24], body[25]);
    let optional_ints: [Option<i64>; 6] =
        std::array::from_fn(|i| (int_present >> i & 1 == 1).then(|| i64_at(26 + 8 * i)));
    let lengths_at = 26 + 6 * 8;
    // All the strings are checked as UTF-8 at once (they are contiguous), then cut apart.
    let text = std::str::from_utf8(&body[FIXED..]).ok()?;
    let mut strings = [""; STRINGS];
    let mut at = 0usize;
    for (i, slot) in strings.iter_mut().enumerate() {
        let n = usize::try_from(u32_at(body, lengths_at + 4 * i)).ok()?;
        let end = at.checked_add(n)?;
        *slot = text.get(at..end)?;
        at = end;
    }
    if at != text.len() {
        return None;
    }
    let text_fields: [&str; 9] = std::array::from_fn(|i| strings[i]);
    let optional_text =
        std::array::from_fn(|i| (text_present >> i & 1 == 1).then(|| strings[9 + i]));
    Some((
        RowValues {
            ints,
            text: text_fields,
            optional_text,
            optional_ints,
        },
        len,
    ))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row with every field set and distinct: unicode, an empty string, extreme numbers.
    fn full() -> RowValues<String> {
        RowValues {
            ints: [i64::MAX, 1, i64::MIN],
            text: [
                "req_1",
                "tenant-ü",
                "",
                "route",
                "openai",
                "openai",
                "gpt-4o-mini",
                "k 🔑 \"q\"",
                "/v1/chat/completions",
            ]
            .map(String::from),
            optional_text: [Some("日本語の話題".into()), Some("0.000001425".into())],
            optional_ints: [
                Some(0),
                Some(-1),
                Some(i64::MAX),
                Some(i64::MIN),
                Some(7),
                Some(1),
            ],
        }
    }

    /// The same with every optional field absent.
    fn sparse() -> RowValues<String> {
        RowValues {
            ints: [0, 0, 0],
            text: std::array::from_fn(|_| String::new()),
            optional_text: [None, None],
            optional_ints: [None; 6],
        }
    }

    fn owned(row: RowValues<&str>) -> RowValues<String> {
        RowValues {
            ints: row.ints,
            text: row.text.map(String::from),
            optional_text: row.optional_text.map(|s| s.map(String::from)),
            optional_ints: row.optional_ints,
        }
    }

    /// The rows read from `bytes` and the torn records met.
    fn read(bytes: &[u8]) -> (Vec<RowValues<String>>, usize) {
        let mut records = Records::new(bytes);
        let rows = records.by_ref().map(owned).collect();
        (rows, records.torn())
    }

    fn record(row: &RowValues<String>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(row, &mut out);
        out
    }

    #[test]
    fn every_field_reads_back_as_written() {
        let (full, sparse) = (full(), sparse());
        let mut bytes = record(&full);
        assert_eq!(bytes[0], MARK);
        assert!(!is_json(&bytes));
        bytes.extend(record(&sparse));
        // One present optional of each kind, the others absent.
        let mut some = self::sparse();
        some.optional_text[1] = Some(String::new());
        some.optional_ints[5] = Some(0);
        bytes.extend(record(&some));
        assert_eq!(read(&bytes), (vec![full, sparse, some], 0));
        assert_eq!(read(&[]), (vec![], 0));
    }

    #[test]
    fn the_zero_tail_ends_the_read_and_a_tail_with_anything_else_is_one_torn_record() {
        let mut bytes = record(&full());
        bytes.extend(record(&sparse()));
        bytes.resize(bytes.len() + 4096, 0);
        assert_eq!(read(&bytes), (vec![full(), sparse()], 0));
        // A record whose first byte never landed, the rest of it did.
        let mut lost_mark = record(&full());
        lost_mark.extend(record(&sparse()));
        let second = record(&full()).len();
        lost_mark[second] = 0;
        lost_mark.resize(lost_mark.len() + 100, 0);
        assert_eq!(read(&lost_mark), (vec![full()], 1));
    }

    #[test]
    fn a_record_cut_anywhere_or_with_any_byte_changed_is_one_torn_record_and_ends_the_read() {
        let whole = record(&full());
        let torn = record(&sparse());
        for cut in 1..torn.len() {
            // A crash mid-copy: a prefix of the record, then the segment's zeros.
            let mut bytes = whole.clone();
            bytes.extend(&torn[..cut]);
            bytes.resize(whole.len() + torn.len() + 64, 0);
            assert_eq!(read(&bytes), (vec![full()], 1), "cut at {cut}");
            // Or up to the written end only.
            assert_eq!(
                read(&bytes[..whole.len() + cut]),
                (vec![full()], 1),
                "cut at {cut}"
            );
        }
        for at in 0..torn.len() {
            let mut bytes = whole.clone();
            bytes.extend(&torn);
            bytes[whole.len() + at] ^= 0x20;
            // A whole record after the bad one is not read: nothing past it is trusted.
            bytes.extend(&whole);
            assert_eq!(read(&bytes), (vec![full()], 1), "byte {at} changed");
        }
    }

    #[test]
    fn an_older_gateways_json_segment_is_told_apart() {
        let mut line = serde_json::to_vec(&full()).expect("json");
        line.push(b'\n');
        assert!(is_json(&line));
        assert!(!is_json(&[0; 8]));
        assert!(!is_json(&[]));
    }
}
