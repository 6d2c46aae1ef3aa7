//! Writing a bbolt file in one pass: buckets of sorted entries, laid out
//! bottom-up (leaf pages as the entries stream by, then branch levels from
//! the first key of each page), then the root bucket, the empty freelist
//! and the two meta pages at the front.

use std::io::{Seek, SeekFrom, Write};

use super::*;
use crate::{Error, Result};

/// Writes a bbolt file to `W`; see the module essay.
pub struct Writer<W: Write + Seek> {
    out: W,
    /// The next page id to allocate (pages 0–2 are meta and freelist).
    next: u64,
    /// Named buckets written so far, with their headers.
    buckets: Vec<(Vec<u8>, Vec<u8>)>,
}

fn io(e: std::io::Error) -> Error {
    Error::Bolt(format!("write: {e}"))
}

/// One element of a page being filled: flags (leaf) or child page (branch),
/// key, value (leaf only).
struct Element {
    tag: u64,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl<W: Write + Seek> Writer<W> {
    /// Starts a file at the beginning of `out`.
    pub fn new(mut out: W) -> Result<Self> {
        out.seek(SeekFrom::Start(0)).map_err(io)?;
        out.write_all(&[0u8; 3 * PAGE_SIZE]).map_err(io)?;
        Ok(Self {
            out,
            next: 3,
            buckets: Vec::new(),
        })
    }

    /// Writes the bucket `name` with `entries`, which must be in strictly
    /// ascending key order. Bucket names must be unique.
    pub fn bucket<I>(&mut self, name: &[u8], entries: I) -> Result<()>
    where
        I: IntoIterator<Item = Result<(Vec<u8>, Vec<u8>)>>,
    {
        if self.buckets.iter().any(|(n, _)| n == name) {
            return Err(Error::Bolt(format!(
                "bucket {} written twice",
                String::from_utf8_lossy(name)
            )));
        }
        let root = self.tree(entries.into_iter().map(|e| e.map(|(k, v)| (0, k, v))))?;
        self.buckets.push((name.to_vec(), bucket_header(root)));
        Ok(())
    }

    /// Writes a small bucket inline, as bbolt does for buckets that fit in
    /// a fraction of a page (for tests of readers).
    #[cfg(test)]
    pub(super) fn inline_bucket(&mut self, name: &[u8], entries: Vec<(Vec<u8>, Vec<u8>)>) {
        let elements: Vec<Element> = entries
            .into_iter()
            .map(|(key, value)| Element { tag: 0, key, value })
            .collect();
        let mut value = bucket_header(0);
        let page = encode(0, LEAF, &elements).expect("small page");
        let used = PAGE_HEADER
            + elements
                .iter()
                .map(|e| ELEMENT + e.key.len() + e.value.len())
                .sum::<usize>();
        value.extend_from_slice(&page[..used]);
        self.buckets.push((name.to_vec(), value));
    }

    /// Writes the root bucket, the freelist and the meta pages; returns the
    /// output, positioned at the end of the last page.
    pub fn finish(mut self) -> Result<W> {
        let mut names = std::mem::take(&mut self.buckets);
        names.sort();
        let entries = names
            .into_iter()
            .map(|(name, header)| Ok((u64::from(BUCKET_ELEMENT), name, header)));
        let root = self.tree(entries)?;
        let end = self.next;
        for (id, txid) in [(0u64, 0u64), (1, 1)] {
            let mut page = vec![0u8; PAGE_SIZE];
            page[0..8].copy_from_slice(&id.to_le_bytes());
            page[8..10].copy_from_slice(&META.to_le_bytes());
            let m = &mut page[PAGE_HEADER..PAGE_HEADER + META_CHECKED + 8];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            // flags (12..16) stay 0
            m[16..24].copy_from_slice(&root.to_le_bytes());
            // root bucket sequence (24..32) stays 0
            m[32..40].copy_from_slice(&2u64.to_le_bytes()); // freelist page
            m[40..48].copy_from_slice(&end.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv64a(&m[..META_CHECKED]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
            self.out
                .seek(SeekFrom::Start(id * PAGE_SIZE as u64))
                .map_err(io)?;
            self.out.write_all(&page).map_err(io)?;
        }
        let mut freelist = vec![0u8; PAGE_SIZE];
        freelist[0..8].copy_from_slice(&2u64.to_le_bytes());
        freelist[8..10].copy_from_slice(&FREELIST.to_le_bytes());
        self.out.write_all(&freelist).map_err(io)?;
        self.out
            .seek(SeekFrom::Start(end * PAGE_SIZE as u64))
            .map_err(io)?;
        Ok(self.out)
    }

    /// Writes one B+tree from `(flags, key, value)` in ascending key order;
    /// returns its root page.
    fn tree<I>(&mut self, entries: I) -> Result<u64>
    where
        I: Iterator<Item = Result<(u64, Vec<u8>, Vec<u8>)>>,
    {
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut page: Vec<Element> = Vec::new();
        let mut size = PAGE_HEADER;
        let mut prev: Option<Vec<u8>> = None;
        for e in entries {
            let (tag, key, value) = e?;
            if prev.as_ref().is_some_and(|p| key <= *p) {
                return Err(Error::Bolt("bucket keys not in ascending order".into()));
            }
            prev = Some(key.clone());
            let add = ELEMENT + key.len() + value.len();
            if !page.is_empty() && size + add > PAGE_SIZE {
                let first = page[0].key.clone();
                let id = self.page(LEAF, &std::mem::take(&mut page))?;
                level.push((first, id));
                size = PAGE_HEADER;
            }
            size += add;
            page.push(Element { tag, key, value });
        }
        if !page.is_empty() || level.is_empty() {
            let first = page.first().map(|e| e.key.clone()).unwrap_or_default();
            let id = self.page(LEAF, &page)?;
            level.push((first, id));
        }
        while level.len() > 1 {
            let mut up = Vec::new();
            let mut page: Vec<Element> = Vec::new();
            let mut size = PAGE_HEADER;
            for (key, child) in std::mem::take(&mut level) {
                let add = ELEMENT + key.len();
                if !page.is_empty() && size + add > PAGE_SIZE {
                    let first = page[0].key.clone();
                    up.push((first, self.page(BRANCH, &std::mem::take(&mut page))?));
                    size = PAGE_HEADER;
                }
                size += add;
                page.push(Element {
                    tag: child,
                    key,
                    value: Vec::new(),
                });
            }
            let first = page[0].key.clone();
            up.push((first, self.page(BRANCH, &page)?));
            level = up;
        }
        Ok(level[0].1)
    }

    /// Writes one page (with overflow pages if it needs them); its id.
    fn page(&mut self, kind: u16, elements: &[Element]) -> Result<u64> {
        let id = self.next;
        let b = encode(id, kind, elements)?;
        self.out.write_all(&b).map_err(io)?;
        self.next += (b.len() / PAGE_SIZE) as u64;
        Ok(id)
    }
}

fn bucket_header(root: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(BUCKET_HEADER);
    header.extend_from_slice(&root.to_le_bytes());
    header.extend_from_slice(&0u64.to_le_bytes()); // sequence
    header
}

/// Page `id` of `kind` holding `elements`, padded to whole pages.
fn encode(id: u64, kind: u16, elements: &[Element]) -> Result<Vec<u8>> {
    {
        let data: usize = elements.iter().map(|e| e.key.len() + e.value.len()).sum();
        let len = PAGE_HEADER + ELEMENT * elements.len() + data;
        let pages = len.div_ceil(PAGE_SIZE).max(1);
        let mut b = vec![0u8; pages * PAGE_SIZE];
        b[0..8].copy_from_slice(&id.to_le_bytes());
        b[8..10].copy_from_slice(&kind.to_le_bytes());
        let count = u16::try_from(elements.len())
            .map_err(|_| Error::Bolt("too many elements in a page".into()))?;
        b[10..12].copy_from_slice(&count.to_le_bytes());
        b[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
        let mut at = PAGE_HEADER + ELEMENT * elements.len();
        for (i, e) in elements.iter().enumerate() {
            let el = PAGE_HEADER + ELEMENT * i;
            let pos = (at - el) as u32;
            let h = &mut b[el..el + ELEMENT];
            if kind == LEAF {
                h[0..4].copy_from_slice(&(e.tag as u32).to_le_bytes());
                h[4..8].copy_from_slice(&pos.to_le_bytes());
                h[8..12].copy_from_slice(&(e.key.len() as u32).to_le_bytes());
                h[12..16].copy_from_slice(&(e.value.len() as u32).to_le_bytes());
            } else {
                h[0..4].copy_from_slice(&pos.to_le_bytes());
                h[4..8].copy_from_slice(&(e.key.len() as u32).to_le_bytes());
                h[8..16].copy_from_slice(&e.tag.to_le_bytes());
            }
            b[at..at + e.key.len()].copy_from_slice(&e.key);
            at += e.key.len();
            b[at..at + e.value.len()].copy_from_slice(&e.value);
            at += e.value.len();
        }
        Ok(b)
    }
}
