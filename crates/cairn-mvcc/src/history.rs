//! Change history read back from stored versions: what a watcher that fell
//! behind (or starts in the past) replays before joining the live feed.

use cairn_api::mvccpb::{event::EventType, Event, KeyValue};
use cairn_storage::keys::{self, decode_version};
use cairn_storage::Snapshot;

use crate::range::Span;
use crate::record::Record;
use crate::Result;

/// Every event on keys in `span` with `from <= revision <= to`, ordered by
/// revision, then key (the order live events are published in). Each event
/// carries its `prev_kv` when the key was live just before.
///
/// The caller checks `from` against the compaction revision: versions below
/// it are gone, so a `prev_kv` may be missing for events at the boundary.
pub fn history(read: &dyn Snapshot, span: &Span, from: i64, to: i64) -> Result<Vec<(i64, Event)>> {
    let mut out = Vec::new();
    if from > to {
        return Ok(out);
    }
    let (lo, hi) = match span {
        Span::Single(k) => keys::versions_of(k),
        Span::Range(s, e) => keys::version_range(s, e.as_deref()),
    };
    let mut prev: Option<(Vec<u8>, Option<KeyValue>)> = None;
    for item in read.scan(lo, hi, false) {
        let (k, v) = item?;
        let (user, rev) = decode_version(&k)?;
        if !span.contains(&user) {
            continue;
        }
        let record = Record::decode(&user, &v)?;
        let before = match &prev {
            Some((u, kv)) if *u == user => kv.clone(),
            _ => None,
        };
        let now = match &record {
            Record::Put(kv) => Some(kv.clone()),
            Record::Tombstone => None,
        };
        if rev >= from && rev <= to {
            let event = match record {
                Record::Put(kv) => Event {
                    r#type: EventType::Put as i32,
                    kv: Some(kv),
                    prev_kv: before,
                },
                Record::Tombstone => Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: user.clone(),
                        mod_revision: rev,
                        ..Default::default()
                    }),
                    prev_kv: before,
                },
            };
            out.push((rev, event));
        }
        prev = Some((user, now));
    }
    out.sort_by(|(ra, a), (rb, b)| ra.cmp(rb).then_with(|| key_of(a).cmp(key_of(b))));
    Ok(out)
}

fn key_of(e: &Event) -> &[u8] {
    e.kv.as_ref().map_or(&[][..], |kv| kv.key.as_slice())
}
