//! Reading a bbolt file: the meta pages, then buckets walked in key order.
//! The file comes from a user, so every offset is checked: a damaged or
//! foreign file is an error, never a panic or an endless walk — the pages
//! the meta claims must be in the file, arithmetic is checked, nothing is
//! allocated past the file's size, and a walk visits each page once.

use super::*;
use crate::{Error, Result};

/// Positioned reads from a file or a buffer.
pub trait ReadAt {
    /// Fills `buf` from `offset`; an error if the source is shorter.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Bytes in the source.
    fn size(&self) -> std::io::Result<u64>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
        {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// What a walk calls for each leaf element: flags, key, value.
type Visit<'a> = dyn FnMut(u32, &[u8], &[u8]) -> Result<()> + 'a;
/// What [`Reader::for_each`] calls for each entry: key, value.
pub type Entry<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// The pages one walk has read: a bit per page of the file.
struct Visited(Vec<u64>);

impl Visited {
    fn new(pages: u64) -> Self {
        Visited(vec![0; pages.div_ceil(64) as usize])
    }

    /// True the first time `id` is asked about.
    fn first_visit(&mut self, id: u64) -> bool {
        let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }
}

/// Deepest B+tree a reader follows (bbolt's trees are a few levels deep;
/// a cycle in a damaged file stops here).
const MAX_DEPTH: usize = 64;

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Bolt(format!("not a valid bbolt file: {what}"))
}

fn slice(b: &[u8], at: usize, len: usize) -> Result<&[u8]> {
    at.checked_add(len)
        .and_then(|end| b.get(at..end))
        .ok_or_else(|| bad("element out of its page"))
}

/// An open bbolt file.
pub struct Reader<R: ReadAt + ?Sized> {
    page_size: usize,
    /// The root bucket's root page.
    root: u64,
    /// Pages in the file (the meta's high-water mark).
    pages: u64,
    src: Box<R>,
}

/// The meta fields a reader uses.
struct Meta {
    page_size: usize,
    root: u64,
    pages: u64,
    txid: u64,
}

fn meta(src: &(impl ReadAt + ?Sized), offset: u64) -> Option<Meta> {
    let mut b = [0u8; PAGE_HEADER + META_CHECKED + 8];
    src.read_at(&mut b, offset).ok()?;
    if u16_at(&b, 8) & META == 0 {
        return None;
    }
    let m = &b[PAGE_HEADER..];
    if u32_at(m, 0) != MAGIC || u32_at(m, 4) != VERSION {
        return None;
    }
    if fnv64a(&m[..META_CHECKED]) != u64_at(m, 56) {
        return None;
    }
    let page_size = u32_at(m, 8) as usize;
    if !(512..=1 << 20).contains(&page_size) {
        return None;
    }
    Some(Meta {
        page_size,
        root: u64_at(m, 16),
        pages: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

impl<R: ReadAt + ?Sized> Reader<R> {
    /// Opens `src`: the valid meta page with the larger transaction id.
    pub fn open(src: Box<R>) -> Result<Self> {
        let first = meta(&*src, 0);
        let second = [
            first.as_ref().map_or(PAGE_SIZE, |m| m.page_size),
            4096,
            16384,
            65536,
        ]
        .into_iter()
        .find_map(|ps| meta(&*src, ps as u64));
        let m = match (first, second) {
            (Some(a), Some(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Some(m), None) | (None, Some(m)) => m,
            (None, None) => return Err(bad("no valid meta page")),
        };
        let size = src.size().map_err(bad)?;
        if m.pages
            .checked_mul(m.page_size as u64)
            .is_none_or(|need| need > size)
        {
            return Err(bad(format!(
                "{} pages of {} bytes claimed, {size} bytes in the file",
                m.pages, m.page_size
            )));
        }
        Ok(Self {
            page_size: m.page_size,
            root: m.root,
            pages: m.pages,
            src,
        })
    }

    /// Reads page `id` with its overflow pages, marking it visited.
    fn page(&self, id: u64, seen: &mut Visited) -> Result<Vec<u8>> {
        if id < 2 || id >= self.pages {
            return Err(bad(format!("page {id} outside the file")));
        }
        if !seen.first_visit(id) {
            return Err(bad(format!("page {id} is reached twice")));
        }
        // In bounds: `pages * page_size` fits the file (checked at open).
        let at = id * self.page_size as u64;
        let mut head = [0u8; PAGE_HEADER];
        self.src
            .read_at(&mut head, at)
            .map_err(|e| bad(format!("page {id}: {e}")))?;
        let span = u64::from(u32_at(&head, 12)) + 1;
        if span > self.pages - id {
            return Err(bad(format!("page {id} overflows the file")));
        }
        let mut b = vec![0u8; (span as usize) * self.page_size];
        self.src
            .read_at(&mut b, at)
            .map_err(|e| bad(format!("page {id}: {e}")))?;
        Ok(b)
    }

    /// The names of the top-level buckets, in order.
    pub fn buckets(&self) -> Result<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        let mut seen = Visited::new(self.pages);
        self.walk_id(self.root, 0, &mut seen, &mut |flags, k, _| {
            if flags & BUCKET_ELEMENT != 0 {
                names.push(k.to_vec());
            }
            Ok(())
        })?;
        Ok(names)
    }

    /// Calls `f` with every key and value of bucket `name`, in key order
    /// (nested buckets are skipped); false if there is no such bucket.
    pub fn for_each(&self, name: &[u8], f: &mut Entry<'_>) -> Result<bool> {
        let mut header = None;
        let mut seen = Visited::new(self.pages);
        self.walk_id(self.root, 0, &mut seen, &mut |flags, k, v| {
            if flags & BUCKET_ELEMENT != 0 && k == name {
                header = Some(v.to_vec());
            }
            Ok(())
        })?;
        let Some(h) = header else {
            return Ok(false);
        };
        let root = u64_at(slice(&h, 0, BUCKET_HEADER)?, 0);
        let mut leaf = |flags: u32, k: &[u8], v: &[u8]| {
            if flags & BUCKET_ELEMENT == 0 {
                f(k, v)?;
            }
            Ok(())
        };
        let mut seen = Visited::new(self.pages);
        if root == 0 {
            // Inline: the bucket's one leaf page follows its header.
            self.walk_page(&h[BUCKET_HEADER..], 0, &mut seen, &mut leaf)?;
        } else {
            self.walk_id(root, 0, &mut seen, &mut leaf)?;
        }
        Ok(true)
    }

    fn walk_id(&self, id: u64, depth: usize, seen: &mut Visited, f: &mut Visit<'_>) -> Result<()> {
        let page = self.page(id, seen)?;
        self.walk_page(&page, depth, seen, f)
    }

    /// Walks the tree under the page in `b` (leaf elements to `f`).
    fn walk_page(
        &self,
        b: &[u8],
        depth: usize,
        seen: &mut Visited,
        f: &mut Visit<'_>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(bad("tree too deep"));
        }
        let head = slice(b, 0, PAGE_HEADER)?;
        let (flags, count) = (u16_at(head, 8), usize::from(u16_at(head, 10)));
        for i in 0..count {
            let el = PAGE_HEADER + ELEMENT * i;
            let e = slice(b, el, ELEMENT)?;
            if flags & LEAF != 0 {
                let (eflags, pos) = (u32_at(e, 0), u32_at(e, 4) as usize);
                let (ksize, vsize) = (u32_at(e, 8) as usize, u32_at(e, 12) as usize);
                let key = slice(b, el + pos, ksize)?;
                let value = slice(b, el + pos + ksize, vsize)?;
                f(eflags, key, value)?;
            } else if flags & BRANCH != 0 {
                let (pos, ksize) = (u32_at(e, 0) as usize, u32_at(e, 4) as usize);
                slice(b, el + pos, ksize)?;
                self.walk_id(u64_at(e, 8), depth + 1, seen, f)?;
            } else {
                return Err(bad(format!("page of kind {flags:#x} inside a bucket")));
            }
        }
        Ok(())
    }
}
