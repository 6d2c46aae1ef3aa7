//! The watch side of a robustness run: one watcher follows every key of the
//! workload from revision 1, resuming from `last + 1` on another node
//! whenever its stream breaks (a killed or partitioned node), and the
//! events it saw are checked against etcd's watch guarantees and against
//! the KV history:
//!
//! - ordered and unique: revisions strictly increase (every workload write
//!   touches one key, so one event per revision), across resumptions too;
//! - reliable (no gaps): every acknowledged write at or below the last
//!   event's revision, or a later progress notification's, was delivered,
//!   and no event comes at or below a notification already received;
//! - valid: every event is a write the history contains (same key,
//!   revision and value for puts; a delete for deletes) — an event of a
//!   write whose answer was lost is fine: it shows the write happened.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::watch_client::WatchClient;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::{WatchCreateRequest, WatchProgressRequest, WatchRequest};
use cairn_api::mvccpb::event::EventType;
use cairn_check::{Operation, Request, Status};
use tokio_stream::wrappers::ReceiverStream;

/// One delivered event.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub revision: i64,
    pub key: String,
    /// `None` for a delete.
    pub value: Option<String>,
    /// Which response brought it: counted over the whole follow, resumed
    /// streams included (a revision must come in one).
    pub response: u64,
}

/// What the watcher saw.
#[derive(Debug, Default)]
pub struct Followed {
    /// Events in order of arrival.
    pub events: Vec<Seen>,
    /// Every event at or below this revision was delivered: the last
    /// event's, or a later progress notification's.
    pub seen_to: i64,
    /// Set if an event came at or below a revision a progress notification
    /// had already covered (a notification that promised too much).
    pub broken_progress: Option<String>,
    /// How many times the watch had to be re-created elsewhere.
    pub resumes: u32,
    /// Set if a resumed watch was refused as compacted: the store compacted
    /// past what the watcher had seen, which the compactor never asks for.
    pub compacted: Option<String>,
}

/// How long after the workload's deadline, and after `until` is known, the
/// watcher may take to catch up with the history before it gives up (and
/// [`caught_up`] fails the run).
const CATCH_UP: Duration = Duration::from_secs(30);
/// How long after the deadline the watcher follows while `until` is not
/// known yet (the run sends it once every workload has ended: the leases'
/// grace and the sleepers' recovery take their time).
const UNTIL_WAIT: Duration = Duration::from_secs(300);

/// Follows `prefix` on the endpoints, rotating endpoints on failure, until
/// it has seen everything up to the revision `until` names once the
/// workload ended ([`last_answered`]: then the events are complete and
/// every lost answer can be resolved), or [`CATCH_UP`] past `deadline` and
/// past the moment `until` came.
/// Once `until` is known it asks for progress notifications every second:
/// other keys move revisions past this prefix's last event, and a
/// notification at R says every event up to R was sent. `progress` is kept
/// at the last event's revision (the compactor never compacts past it + 1).
pub async fn follow(
    endpoints: Vec<String>,
    prefix: &str,
    deadline: Instant,
    progress: std::sync::Arc<std::sync::atomic::AtomicI64>,
    until: tokio::sync::watch::Receiver<Option<i64>>,
) -> Followed {
    let mut seen: Vec<Seen> = Vec::new();
    // Every event at or below this was delivered (last event or progress).
    let mut seen_to = 0i64;
    // The highest progress notification: no event at or below it may
    // come after it (on any stream: a resumed one starts past it).
    let mut promised = 0i64;
    let mut broken_progress = None;
    let mut resumes = 0u32;
    let mut compacted = None;
    let mut responses = 0u64;
    let mut ep = 0usize;
    // When `until` was first seen; the time left runs from it.
    let mut until_at: Option<Instant> = None;
    let end = |until_at: &mut Option<Instant>| {
        if until_at.is_none() && until.borrow().is_some() {
            *until_at = Some(Instant::now());
        }
        match *until_at {
            Some(at) => at.max(deadline) + CATCH_UP,
            None => deadline + UNTIL_WAIT,
        }
    };
    let caught_up = |seen_to: i64| (*until.borrow()).is_some_and(|r| seen_to >= r);
    let range_end = {
        let mut e = prefix.as_bytes().to_vec();
        *e.last_mut().expect("non-empty prefix") += 1;
        e
    };
    while Instant::now() < end(&mut until_at) && !caught_up(seen_to) {
        let start = seen.last().map_or(1, |s| s.revision + 1);
        let addr = &endpoints[ep % endpoints.len()];
        ep += 1;
        let Ok(ch) = crate::secured::connect(
            crate::secured::endpoint(addr).connect_timeout(Duration::from_secs(1)),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let _ = tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: prefix.as_bytes().to_vec(),
                    range_end: range_end.clone(),
                    start_revision: start,
                    ..Default::default()
                })),
            })
            .await;
        let Ok(resp) = WatchClient::new(ch).watch(ReceiverStream::new(rx)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = resp.into_inner();
        // Once `until` is known: ask for progress every second (the first
        // tick is at once), and move on from a node whose answers stop
        // advancing `seen_to` (a lagging or cut-off replica).
        let mut ask = tokio::time::interval(Duration::from_secs(1));
        ask.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let (mut heard, mut advanced) = (Instant::now(), Instant::now());
        loop {
            // A stream that stays silent for 2 s may be on a partitioned
            // node: move on (resuming loses nothing).
            let silent = Duration::from_secs(2).saturating_sub(heard.elapsed());
            let left = end(&mut until_at).saturating_duration_since(Instant::now());
            let message = tokio::select! {
                m = tokio::time::timeout(silent.min(left), stream.message()) => m,
                _ = ask.tick(), if until.borrow().is_some() => {
                    let progress_request = RequestUnion::ProgressRequest(WatchProgressRequest {});
                    let _ = tx.try_send(WatchRequest {
                        request_union: Some(progress_request),
                    });
                    if advanced.elapsed() >= Duration::from_secs(4) {
                        break;
                    }
                    continue;
                }
            };
            match message {
                Ok(Ok(Some(m))) => {
                    heard = Instant::now();
                    if m.canceled {
                        if m.compact_revision > 0 && compacted.is_none() {
                            compacted = Some(format!(
                                "watch resumed at revision {start} was refused: compacted at {}",
                                m.compact_revision
                            ));
                        }
                        break;
                    }
                    if !m.created && m.events.is_empty() {
                        let r = m.header.map_or(0, |h| h.revision);
                        if r > seen_to {
                            seen_to = r;
                            promised = promised.max(r);
                            advanced = Instant::now();
                        }
                    }
                    responses += 1;
                    for e in m.events {
                        let kv = e.kv.unwrap_or_default();
                        let delete = e.r#type == EventType::Delete as i32;
                        if kv.mod_revision <= promised && broken_progress.is_none() {
                            broken_progress = Some(format!(
                                "watch event at revision {} arrived after a progress notification at {promised}",
                                kv.mod_revision
                            ));
                        }
                        progress.fetch_max(kv.mod_revision, std::sync::atomic::Ordering::Relaxed);
                        if kv.mod_revision > seen_to {
                            seen_to = kv.mod_revision;
                            advanced = Instant::now();
                        }
                        seen.push(Seen {
                            revision: kv.mod_revision,
                            key: String::from_utf8_lossy(&kv.key).into_owned(),
                            value: (!delete)
                                .then(|| String::from_utf8_lossy(&kv.value).into_owned()),
                            response: responses,
                        });
                    }
                }
                _ => break,
            }
            if Instant::now() >= end(&mut until_at) || caught_up(seen_to) {
                break;
            }
        }
        resumes += 1;
        if compacted.is_some() {
            break;
        }
    }
    Followed {
        events: seen,
        seen_to,
        broken_progress,
        resumes: resumes.saturating_sub(1),
        compacted,
    }
}

/// Checks the events against the guarantees and the history; returns the
/// first violation found.
pub fn check(events: &[Seen], history: &[Operation], seen_to: i64) -> Result<(), String> {
    for w in events.windows(2) {
        if w[1].revision <= w[0].revision {
            return Err(format!(
                "watch events out of order or duplicated: {:?} then {:?}",
                w[0], w[1]
            ));
        }
    }
    // Writes by revision (acknowledged), and possible writes (unknown) by (key, value).
    let mut acked: HashMap<i64, &Operation> = HashMap::new();
    let mut possible: HashMap<(String, Option<String>), Vec<&Operation>> = HashMap::new();
    for o in history {
        let (value, wrote) = match &o.op {
            Request::Put { value, .. } => (Some(value.clone()), true),
            Request::Cas { value, .. } => (Some(value.clone()), o.result.succeeded != Some(false)),
            Request::Delete { .. } => (None, o.result.deleted.unwrap_or(1) > 0),
            Request::Get { .. } => (None, false),
        };
        if !wrote || o.result.status == Status::Fail {
            continue;
        }
        if o.result.status == Status::Ok {
            if let Some(r) = o.result.revision {
                acked.insert(r, o);
            }
        }
        possible
            .entry((o.op.key().to_string(), value))
            .or_default()
            .push(o);
    }
    for e in events {
        let valid = match acked.get(&e.revision) {
            Some(o) => {
                o.op.key() == e.key
                    && match (&o.op, &e.value) {
                        (Request::Delete { .. }, None) => true,
                        (Request::Put { value, .. } | Request::Cas { value, .. }, Some(v)) => {
                            value == v
                        }
                        _ => false,
                    }
            }
            None => possible
                .get(&(e.key.clone(), e.value.clone()))
                .is_some_and(|ops| {
                    ops.iter()
                        .any(|o| o.result.status == Status::Unknown || e.value.is_none())
                }),
        };
        if !valid {
            return Err(format!(
                "watch event matches no write in the history: {e:?}"
            ));
        }
    }
    // Every write at or below the last event, or below a later progress
    // notification, was delivered.
    let last = events.last().map_or(0, |e| e.revision).max(seen_to);
    let delivered: std::collections::HashSet<i64> = events.iter().map(|e| e.revision).collect();
    let mut missing: Vec<i64> = acked
        .keys()
        .filter(|r| **r <= last && !delivered.contains(r))
        .copied()
        .collect();
    missing.sort_unstable();
    if let Some(r) = missing.first() {
        return Err(format!(
            "watch missed {} acknowledged write(s) at or below revision {last}, up to which it saw everything (last event or progress notification), first at revision {r}: {:?}",
            missing.len(),
            acked[r]
        ));
    }
    Ok(())
}

/// The highest revision any answer in the history carries (0 if none): a
/// write's, a read's header, the revision of a value a read or a failed
/// cas saw. Once the watcher has seen every event up to this, a write
/// whose answer was lost and whose event is missing changed nothing any
/// answer could reflect.
pub fn last_answered(history: &[Operation]) -> i64 {
    history
        .iter()
        .filter(|o| o.result.status == Status::Ok)
        .filter_map(|o| {
            let seen = o.result.kv.as_ref().map(|kv| kv.mod_revision);
            o.result.revision.max(seen)
        })
        .max()
        .unwrap_or(0)
}

/// Whether a watcher that saw everything up to `seen_to` got as far as
/// `until` (the last revision the workload's answers carry) in the
/// [`CATCH_UP`] it had after the run; if not, its stream stalled, or
/// every member it tried stayed behind — events a client waits for that
/// never come.
pub fn caught_up(seen_to: i64, until: i64) -> Result<(), String> {
    match seen_to >= until {
        true => Ok(()),
        false => Err(format!(
            "the watch never caught up: it saw up to revision {seen_to}, answers went to {until} (given {} s once the run ended and its answers were in)",
            CATCH_UP.as_secs()
        )),
    }
}

/// Resolves writes whose answer was lost using the watch events (as etcd's
/// robustness suite does): values are unique, so a put or cas whose value
/// appears in an event happened, at that event's revision; one whose value
/// never appears did not — provided the events are complete, i.e. the watch
/// checks passed and every event up to `seen_to`, at or above every
/// revision an answer carries ([`last_answered`]), was delivered.
/// A delete event does not name its writer, but one whose revision no
/// acknowledged delete explains must come from an unknown delete of that
/// key: each such event is matched to one (see below), and the unknown
/// deletes left over removed nothing. Returns how many operations were
/// resolved.
pub fn resolve_unknown(history: &mut [Operation], events: &[Seen], seen_to: i64) -> usize {
    let complete = seen_to >= last_answered(history);
    let by_value: HashMap<(&str, &str), i64> = events
        .iter()
        .filter_map(|e| Some(((e.key.as_str(), e.value.as_deref()?), e.revision)))
        .collect();
    // Deletes that removed the key, by (key, revision). (One that found the
    // key absent carries the store's current revision — possibly that of
    // an unknown delete's event — and explains nothing.)
    let acked_deletes: std::collections::HashSet<(&str, i64)> = history
        .iter()
        .filter(|o| matches!(o.op, Request::Delete { .. }) && o.result.status == Status::Ok)
        .filter(|o| o.result.deleted.unwrap_or(0) > 0)
        .filter_map(|o| Some((o.op.key(), o.result.revision?)))
        .collect();
    let unexplained: Vec<&Seen> = events
        .iter()
        .filter(|e| e.value.is_none() && !acked_deletes.contains(&(e.key.as_str(), e.revision)))
        .collect();
    // Time bounds of revisions, from answered operations: the write at R was
    // invoked before any operation carrying a revision above R returned, and
    // every operation that returned before it was invoked carries a revision
    // below R. An unknown delete is a candidate for event R only if both hold.
    let mut by_rev: Vec<(i64, u64)> = history
        .iter()
        .filter(|o| o.result.status == Status::Ok)
        .filter_map(|o| Some((o.result.revision?, o.ret?)))
        .collect();
    by_rev.sort_unstable();
    let mut suffix_min_ret = vec![u64::MAX; by_rev.len() + 1];
    for i in (0..by_rev.len()).rev() {
        suffix_min_ret[i] = suffix_min_ret[i + 1].min(by_rev[i].1);
    }
    let returned_before_rev = |r: i64| {
        // Earliest return of an operation carrying a revision above r.
        let i = by_rev.partition_point(|(x, _)| *x <= r);
        suffix_min_ret[i]
    };
    let mut by_ret: Vec<(u64, i64)> = by_rev.iter().map(|(r, t)| (*t, *r)).collect();
    by_ret.sort_unstable();
    let mut prefix_max_rev = vec![0i64; by_ret.len() + 1];
    for i in 0..by_ret.len() {
        prefix_max_rev[i + 1] = prefix_max_rev[i].max(by_ret[i].1);
    }
    let max_rev_returned_before = |t: u64| {
        let i = by_ret.partition_point(|(x, _)| *x < t);
        prefix_max_rev[i]
    };
    // Every unexplained delete event needs an unknown delete of its key as
    // its writer. The candidates for an event are the unknown deletes
    // invoked early enough (both bounds above only cap the call time, and
    // both grow with the revision), so candidate sets are nested and a
    // greedy matching — events in revision order, each taking the
    // earliest-invoked free candidate — is maximal. Which delete did it does
    // not matter to the model (same key, same effect); only the call time
    // does, and the earliest call is the most permissive choice. A key whose
    // events cannot all be matched is left unresolved for the checker.
    let mut pinned: HashMap<u64, i64> = HashMap::new();
    let mut unmatched: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut free: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
    for o in history
        .iter()
        .filter(|o| o.result.status == Status::Unknown)
    {
        if let Request::Delete { key } = &o.op {
            free.entry(key.as_str()).or_default().push((o.call, o.id));
        }
    }
    for cands in free.values_mut() {
        cands.sort_unstable();
    }
    for e in &unexplained {
        let cands = free.entry(e.key.as_str()).or_default();
        let limit = returned_before_rev(e.revision);
        let pick = cands
            .iter()
            .position(|&(call, _)| call < limit && max_rev_returned_before(call) < e.revision);
        match pick {
            Some(i) => {
                let (_, id) = cands.remove(i);
                pinned.insert(id, e.revision);
            }
            None => {
                unmatched.insert(e.key.clone());
            }
        }
    }
    let mut resolved = 0;
    for o in history.iter_mut() {
        if o.result.status != Status::Unknown {
            continue;
        }
        let value = match &o.op {
            Request::Put { value, .. } | Request::Cas { value, .. } => value.clone(),
            Request::Delete { key } => {
                if let Some(&r) = pinned.get(&o.id) {
                    o.result.status = Status::Ok;
                    o.result.revision = Some(r);
                    o.result.deleted = Some(1);
                    resolved += 1;
                } else if complete && !unmatched.contains(key) {
                    // Every delete event of this key is explained without
                    // it: it removed nothing or never happened.
                    o.result.status = Status::Fail;
                    resolved += 1;
                }
                continue;
            }
            Request::Get { .. } => continue,
        };
        let is_cas = matches!(o.op, Request::Cas { .. });
        match by_value.get(&(o.op.key(), value.as_str())) {
            Some(&r) => {
                o.result.status = Status::Ok;
                o.result.revision = Some(r);
                if is_cas {
                    o.result.succeeded = Some(true);
                }
                resolved += 1;
            }
            None if complete => {
                // Never took effect: it can be dropped from the check.
                o.result.status = Status::Fail;
                resolved += 1;
            }
            None => {}
        }
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_check::Outcome;

    fn op(id: u64, call: u64, ret: Option<u64>, op: Request, result: Outcome) -> Operation {
        Operation {
            id,
            client: id,
            call,
            ret,
            op,
            result,
        }
    }

    fn put(id: u64, call: u64, ret: u64, value: &str, rev: i64) -> Operation {
        let mut r = Outcome::of(Status::Ok);
        r.revision = Some(rev);
        let req = Request::Put {
            key: "k".into(),
            value: value.into(),
        };
        op(id, call, Some(ret), req, r)
    }

    fn unknown_delete(id: u64, call: u64) -> Operation {
        let req = Request::Delete { key: "k".into() };
        op(id, call, None, req, Outcome::of(Status::Unknown))
    }

    /// A value a read saw: (value, mod, create revision, version).
    fn kv(
        value: &str,
        mod_revision: i64,
        create_revision: i64,
        version: i64,
    ) -> cairn_check::KeyValue {
        cairn_check::KeyValue {
            value: value.into(),
            mod_revision,
            create_revision,
            version,
        }
    }

    /// `seen_to` when the watcher saw nothing past its last event.
    fn last(events: &[Seen]) -> i64 {
        events.last().map_or(0, |e| e.revision)
    }

    fn event(revision: i64, value: Option<&str>) -> Seen {
        Seen {
            revision,
            key: "k".into(),
            value: value.map(str::to_string),
            response: revision as u64,
        }
    }

    #[test]
    fn unknown_deletes_are_matched_to_unexplained_delete_events() {
        // put@2, two unknown deletes (calls 15 and 12), delete event @3,
        // put@4, delete event @5 — both deletes happened; the earlier-called
        // one takes the earlier event.
        let mut h = vec![
            put(1, 0, 10, "a", 2),
            unknown_delete(2, 15),
            unknown_delete(3, 12),
            put(4, 20, 30, "b", 4),
            put(5, 40, 50, "c", 6),
        ];
        let events = [
            event(2, Some("a")),
            event(3, None),
            event(4, Some("b")),
            event(5, None),
            event(6, Some("c")),
        ];
        assert_eq!(resolve_unknown(&mut h, &events, last(&events)), 2);
        assert_eq!(h[2].result.revision, Some(3));
        assert_eq!(h[1].result.revision, Some(5));
        assert!(h[1..3].iter().all(|o| o.result.status == Status::Ok));
        let verdict = cairn_check::check(&h, 1_000);
        assert!(
            matches!(verdict, cairn_check::Verdict::Ok { operations: 5, .. }),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_delete_that_found_nothing_explains_no_event() {
        // The unknown delete removed the key at 3; a later delete found it
        // absent and answered with the current revision, also 3. The event
        // at 3 is still the unknown delete's.
        let mut gone = Outcome::of(Status::Ok);
        gone.revision = Some(3);
        gone.deleted = Some(0);
        let mut read = Outcome::of(Status::Ok);
        read.revision = Some(4);
        read.kv = Some(kv("b", 4, 4, 1));
        let mut h = vec![
            put(1, 0, 10, "a", 2),
            unknown_delete(2, 12),
            op(3, 20, Some(25), Request::Delete { key: "k".into() }, gone),
            put(4, 30, 35, "b", 4),
            op(5, 40, Some(45), Request::Get { key: "k".into() }, read),
        ];
        let events = [event(2, Some("a")), event(3, None), event(4, Some("b"))];
        assert_eq!(resolve_unknown(&mut h, &events, last(&events)), 1);
        assert_eq!(h[1].result.revision, Some(3));
        let verdict = cairn_check::check(&h, 1_000);
        assert!(
            matches!(verdict, cairn_check::Verdict::Ok { .. }),
            "{verdict:?}"
        );
    }

    #[test]
    fn unknown_deletes_without_events_did_nothing_and_unmatched_events_stay_unknown() {
        // A delete event @3 but the only unknown delete was invoked after a
        // write at 4 returned: it cannot be the writer, so the key stays
        // unresolved; with no delete event at all it resolves as no effect.
        let mut h = vec![
            put(1, 0, 10, "a", 2),
            put(2, 20, 30, "b", 4),
            unknown_delete(3, 35),
        ];
        let events = [event(2, Some("a")), event(3, None), event(4, Some("b"))];
        assert_eq!(resolve_unknown(&mut h, &events, last(&events)), 0);
        assert_eq!(h[2].result.status, Status::Unknown);
        let events = [event(2, Some("a")), event(4, Some("b"))];
        assert_eq!(resolve_unknown(&mut h, &events, last(&events)), 1);
        assert_eq!(h[2].result.status, Status::Fail);
    }

    #[test]
    fn lost_writes_resolve_only_once_a_progress_notification_covers_every_answer() {
        // The last event is at 4; a failed cas answered with header
        // revision 9 (other keys moved it). Until the watcher knows it saw
        // everything up to 9 (a progress notification), the unknown put
        // whose value no event shows may still have happened at 5..=9.
        let mut failed_cas = Outcome::of(Status::Ok);
        failed_cas.revision = Some(9);
        failed_cas.succeeded = Some(false);
        failed_cas.kv = Some(kv("b", 4, 4, 2));
        let cas = Request::Cas {
            key: "k".into(),
            expect_mod_revision: 1,
            value: "never".into(),
        };
        let lost = Request::Put {
            key: "k".into(),
            value: "lost".into(),
        };
        let mut h = vec![
            put(1, 0, 10, "a", 2),
            op(2, 11, None, lost, Outcome::of(Status::Unknown)),
            put(3, 20, 30, "b", 4),
            op(4, 40, Some(50), cas, failed_cas),
        ];
        assert_eq!(last_answered(&h), 9);
        let events = [event(2, Some("a")), event(4, Some("b"))];
        assert_eq!(resolve_unknown(&mut h, &events, 4), 0);
        assert_eq!(h[1].result.status, Status::Unknown);
        assert_eq!(resolve_unknown(&mut h, &events, 9), 1);
        assert_eq!(h[1].result.status, Status::Fail);
    }

    #[test]
    fn a_read_of_a_lost_write_past_the_last_event_keeps_the_events_incomplete() {
        // The lost put took effect at 6, after the last event the watcher
        // delivered (4), and a read saw it: until the watcher follows to
        // 7 (the read's header), the put stays unknown, not "never
        // happened"; its event then pins it.
        let mut read = Outcome::of(Status::Ok);
        read.revision = Some(7);
        read.kv = Some(kv("lost", 6, 2, 3));
        let lost = Request::Put {
            key: "k".into(),
            value: "lost".into(),
        };
        let mut h = vec![
            put(1, 0, 10, "a", 2),
            put(2, 20, 30, "b", 4),
            op(3, 31, None, lost, Outcome::of(Status::Unknown)),
            op(4, 40, Some(50), Request::Get { key: "k".into() }, read),
        ];
        assert_eq!(last_answered(&h), 7);
        let events = [event(2, Some("a")), event(4, Some("b"))];
        assert_eq!(resolve_unknown(&mut h, &events, 4), 0);
        assert_eq!(h[2].result.status, Status::Unknown);
        let events = [
            event(2, Some("a")),
            event(4, Some("b")),
            event(6, Some("lost")),
        ];
        assert_eq!(resolve_unknown(&mut h, &events, 7), 1);
        assert_eq!(h[2].result.revision, Some(6));
    }

    #[test]
    fn a_write_missing_below_a_progress_notification_is_a_gap() {
        // Events at 2 only, but a progress notification said everything up
        // to 5 was sent: the acknowledged put at 4 was missed.
        let h = vec![put(1, 0, 10, "a", 2), put(2, 20, 30, "b", 4)];
        let events = [event(2, Some("a"))];
        assert!(check(&events, &h, 2).is_ok());
        let err = check(&events, &h, 5).unwrap_err();
        assert!(err.contains("missed 1 acknowledged"), "{err}");
    }
}
