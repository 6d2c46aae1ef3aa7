//! Write transactions: `Txn` (and `Put`/`DeleteRange`, which the caller wraps
//! as one-op transactions) with etcd's semantics.
//!
//! As in etcd, every compare — including those of nested transactions — is
//! evaluated first, against the state before the transaction, to fix the
//! execution path; then the chosen ops run in order, each seeing the writes
//! of the ops before it (read-your-writes through an overlay). All writes
//! carry the transaction's one revision.
//!
//! Every version written also gets its by-revision index entry in the same
//! batch (what [`crate::history`] reads); the first write of a fresh store
//! marks that index complete.

use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::response_op::Response;
use cairn_api::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use cairn_api::mvccpb::{event::EventType, Event, KeyValue};
use cairn_storage::keys::Key;
use cairn_storage::{Snapshot, WriteBatch};

use crate::change::{encode_sub, Change};
use crate::range::{range_with, visible, Overlay, Span};
use crate::record::{self, Record};
use crate::{Error, Rejection, Result, Revisions};

/// What the MVCC layer needs to know about leases.
pub trait LeaseView {
    /// True when lease `id` is granted and not expired or revoked.
    fn exists(&self, id: i64) -> bool;
    /// True when this store keeps the lease table, and with it the lease
    /// → key index that puts and deletes maintain (the region holding
    /// the first key; see [`crate::lease`]).
    fn keeps_index(&self) -> bool;
}

/// A lease view with no leases at all, and no lease table: what a region
/// other than the first applies with (its puts name no lease; its writes
/// to keys a lease holds leave the index alone).
pub struct NoLeases;

impl LeaseView for NoLeases {
    fn exists(&self, _id: i64) -> bool {
        false
    }

    fn keeps_index(&self) -> bool {
        false
    }
}

/// The result of applying a write transaction.
#[derive(Debug)]
pub struct TxnOutcome {
    /// The response, header revision set (ids/term are the caller's).
    pub response: TxnResponse,
    /// The storage writes to commit atomically (empty when nothing changed).
    pub batch: WriteBatch,
    /// Change events in the order the ops ran (a DeleteRange's keys in
    /// key order), every event with its `prev_kv`.
    pub events: Vec<Change>,
    /// The revisions after the transaction.
    pub revisions: Revisions,
    /// The branch each (nested) transaction took, in execution order.
    pub path: Vec<bool>,
}

struct Writer<'a> {
    read: &'a dyn Snapshot,
    rev: i64,
    revs: Revisions,
    leases: &'a dyn LeaseView,
    overlay: Overlay,
    batch: WriteBatch,
    events: Vec<Change>,
    /// The place of the op running among the transaction's ops (every
    /// region's part numbers them alike: [`crate::change`]).
    sub: u32,
    /// How many ops have run.
    ops: u32,
    /// A part of a transaction across regions: only writes within this
    /// span (`[start, end)`, end empty: to the end); ranges are skipped.
    within: Option<crate::locks::KeySpan>,
    /// Puts with a lease are checked against `leases` (not in a part: the
    /// coordinator checked them, under the leases' claims).
    check_leases: bool,
    /// This store keeps the lease → key index: puts and deletes of keys
    /// within maintain it, and (in a part) a put with a lease outside
    /// `within` records its attachment.
    index: bool,
    /// The revision compares and ranges of "now" read at: `revs.current`,
    /// except in [`read_txn_at`] (a view that may hold newer versions).
    read_at: i64,
}

/// Applies `req` at revision `rev` (which must exceed `revs.current`).
/// The request must have passed [`crate::validate_txn`]; the state machine
/// calls it again so a replica never trusts its proposer.
pub fn apply_txn(
    read: &dyn Snapshot,
    req: &TxnRequest,
    rev: i64,
    revs: Revisions,
    leases: &dyn LeaseView,
) -> Result<TxnOutcome> {
    assert!(
        rev > revs.current,
        "revision {rev} must exceed current {}",
        revs.current
    );
    let path = txn_path(read, req, revs, revs.current)?;
    check_along(read, req, &path, revs, leases)?;
    let mut w = Writer {
        read,
        rev,
        revs,
        leases,
        overlay: Overlay::new(),
        batch: WriteBatch::new(),
        events: Vec::new(),
        sub: 0,
        ops: 0,
        within: None,
        check_leases: true,
        index: leases.keeps_index(),
        read_at: revs.current,
    };
    let mut steps = path.clone().into_iter();
    let response = w.execute(req, &mut steps)?;
    let mut out = w.finish(response, revs, path);
    set_header_revision(&mut out.response, out.revisions.current);
    Ok(out)
}

/// Applies one region's part of a transaction across regions (see
/// [`crate::locks`]): the writes of `req` along the branches `path` that
/// fall in `[start, end)`, at revision `rev` — which may be *below*
/// `revs.current`: the part's keys were locked from before `rev` was
/// handed out until now, so every version they hold is older. Compares
/// are not evaluated (the coordinator did, under the locks) and ranges
/// are not read, nor are leases checked (the coordinator did, under the
/// leases' claims). The response holds only this part's puts and deletes.
///
/// `lease_table`: this region keeps the lease table ([`crate::lease`]):
/// it indexes its own keys' leases as [`apply_txn`] does, and records
/// the attachment of every key the transaction puts with a lease in other
/// regions.
pub fn apply_txn_part(
    read: &dyn Snapshot,
    req: &TxnRequest,
    path: &[bool],
    rev: i64,
    revs: Revisions,
    within: crate::locks::KeySpan,
    lease_table: bool,
) -> Result<TxnOutcome> {
    let mut w = Writer {
        read,
        rev,
        // The part's keys see nothing above `rev - 1`.
        revs: Revisions {
            current: rev - 1,
            ..revs
        },
        leases: &NoLeases,
        overlay: Overlay::new(),
        batch: WriteBatch::new(),
        events: Vec::new(),
        sub: 0,
        ops: 0,
        within: Some(within),
        check_leases: false,
        index: lease_table,
        read_at: rev - 1,
    };
    let mut steps = path.iter().copied();
    let response = w.execute(req, &mut steps)?;
    Ok(w.finish(response, revs, path.to_vec()))
}

/// True when `req` writes nothing whichever branches it takes (nested
/// transactions included). etcd serves such a Txn like a Range — a read
/// index, then a local read — without a Raft proposal, and so does Cairn.
pub fn is_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(_)) | None => true,
            Some(Request::RequestTxn(t)) => is_read_only(t),
            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => false,
        })
}

/// True when `req` may write a key, whichever branch it takes (nested
/// transactions included): what a storage quota refuses once space runs out
/// (etcd counts the puts of both branches).
pub fn has_put(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .any(|op| match &op.request {
            Some(Request::RequestPut(_)) => true,
            Some(Request::RequestTxn(t)) => has_put(t),
            _ => false,
        })
}

/// True when every op on both branches is a serializable Range (etcd's
/// rule: such a Txn is served from the local replica, like a serializable
/// Range; a nested Txn makes it linearizable).
pub fn is_serializable(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| matches!(&op.request, Some(Request::RequestRange(r)) if r.serializable))
}

/// Runs a read-only `req` (see [`is_read_only`]) against `read` at `revs`:
/// the same compares and ranges [`apply_txn`] would run, with no revision
/// taken. The header revision is `revs.current`, as for a Range. Given a
/// writing txn it would compute that txn's response but write nothing.
pub fn read_txn(read: &dyn Snapshot, req: &TxnRequest, revs: Revisions) -> Result<TxnResponse> {
    debug_assert!(is_read_only(req), "read_txn given a writing txn");
    let out = apply_txn(read, req, revs.current + 1, revs, &NoLeases)?;
    debug_assert!(out.batch.is_empty() && out.revisions == revs);
    Ok(out.response)
}

/// Runs a read-only `req` as [`read_txn`] does, but at revision `at`, on
/// a view whose newest versions may be above it (`revs.current` is the
/// newest revision the view may hold, `at` ≤ it): every compare and every
/// range of "now" reads as of `at`, a range at a revision above `at` is a
/// future revision, and every header carries `at`. A read-only Txn across
/// regions reads one engine view at its read timestamp so.
pub fn read_txn_at(
    read: &dyn Snapshot,
    req: &TxnRequest,
    revs: Revisions,
    at: i64,
) -> Result<TxnResponse> {
    debug_assert!(is_read_only(req), "read_txn_at given a writing txn");
    debug_assert!(at <= revs.current);
    let path = txn_path(read, req, revs, at)?;
    let mut w = Writer {
        read,
        rev: revs.current + 1,
        revs,
        leases: &NoLeases,
        overlay: Overlay::new(),
        batch: WriteBatch::new(),
        events: Vec::new(),
        sub: 0,
        ops: 0,
        within: None,
        check_leases: true,
        index: false,
        read_at: at,
    };
    let mut steps = path.into_iter();
    let mut response = w.execute(req, &mut steps)?;
    set_header_revision(&mut response, at);
    Ok(response)
}

/// The leases `req` puts keys with along the branches `path` (as
/// [`TxnOutcome::path`] gives them), nested transactions included; a put
/// keeping its lease (`ignore_lease`) names none.
pub fn leases_put_along(req: &TxnRequest, path: &[bool]) -> Vec<i64> {
    let mut out: Vec<i64> = ops_along(req, path)
        .into_iter()
        .filter_map(|op| match op {
            Request::RequestPut(p) if p.lease != 0 && !p.ignore_lease => Some(p.lease),
            _ => None,
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The puts, deletes and ranges `req` runs along the branches `path` (as
/// [`TxnOutcome::path`] gives them), in execution order, nested
/// transactions' in their place.
fn ops_along<'a>(req: &'a TxnRequest, path: &[bool]) -> Vec<&'a Request> {
    fn walk<'a>(
        req: &'a TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
        out: &mut Vec<&'a Request>,
    ) {
        let ops = if path.next().copied().unwrap_or(false) {
            &req.success
        } else {
            &req.failure
        };
        for op in ops {
            match &op.request {
                Some(Request::RequestTxn(t)) => walk(t, path, out),
                Some(other) => out.push(other),
                None => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(req, &mut path.iter(), &mut out);
    out
}

/// etcd's checks before a Txn runs, in its order (`applierV3backend.Txn`
/// in etcd 3.4): first every put along the branches `path` takes (one
/// keeping its value or lease needs its key to exist before the txn, then
/// its lease must exist), then every range at a revision (neither above
/// the current one nor below the compaction). So a Txn whose range at a
/// future revision comes before a put with a lost lease fails with the
/// put's error, as on etcd. (Running the ops would find the same errors,
/// in op order; a put cannot see a key an earlier op of the same txn
/// wrote, since validation refuses two writes of one key.)
fn check_along(
    read: &dyn Snapshot,
    req: &TxnRequest,
    path: &[bool],
    revs: Revisions,
    leases: &dyn LeaseView,
) -> Result<()> {
    let ops = ops_along(req, path);
    for op in &ops {
        if let Request::RequestPut(p) = op {
            if (p.ignore_value || p.ignore_lease) && record::latest(read, &p.key)?.is_none() {
                return Err(Error::from(Rejection::KeyNotFound));
            }
            if p.lease != 0 && !leases.exists(p.lease) {
                return Err(Error::from(Rejection::LeaseNotFound));
            }
        }
    }
    for op in &ops {
        if let Request::RequestRange(r) = op {
            crate::range::read_revision(r.revision, revs)?;
        }
    }
    Ok(())
}

/// The branch each (nested) transaction takes, in execution order.
fn txn_path(read: &dyn Snapshot, req: &TxnRequest, revs: Revisions, at: i64) -> Result<Vec<bool>> {
    let mut path = Vec::new();
    fn walk(
        read: &dyn Snapshot,
        req: &TxnRequest,
        revs: Revisions,
        at: i64,
        out: &mut Vec<bool>,
    ) -> Result<()> {
        let mut ok = true;
        for c in &req.compare {
            if !compare(read, c, revs, at)? {
                ok = false;
                break;
            }
        }
        out.push(ok);
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            if let Some(Request::RequestTxn(t)) = &op.request {
                walk(read, t, revs, at, out)?;
            }
        }
        Ok(())
    }
    walk(read, req, revs, at, &mut path)?;
    Ok(path)
}

/// Evaluates `c` against the versions visible at revision `at`.
fn compare(read: &dyn Snapshot, c: &Compare, revs: Revisions, at: i64) -> Result<bool> {
    let span = Span::new(&c.key, &c.range_end);
    let kvs = visible(read, &span, at, revs, None)?;
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    if kvs.is_empty() {
        // A missing value never compares; other targets compare as zero.
        if target == CompareTarget::Value {
            return Ok(false);
        }
        return Ok(compare_kv(c, target, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, target, kv)))
}

fn compare_kv(c: &Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match (target, &c.target_union) {
        (CompareTarget::Value, Some(TargetUnion::Value(v))) => {
            kv.value.as_slice().cmp(v.as_slice())
        }
        (CompareTarget::Value, _) => kv.value.as_slice().cmp(&[][..]),
        (CompareTarget::Version, t) => kv.version.cmp(&int_target(t)),
        (CompareTarget::Create, t) => kv.create_revision.cmp(&int_target(t)),
        (CompareTarget::Mod, t) => kv.mod_revision.cmp(&int_target(t)),
        (CompareTarget::Lease, t) => kv.lease.cmp(&int_target(t)),
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

fn int_target(t: &Option<TargetUnion>) -> i64 {
    match t {
        Some(TargetUnion::Version(v))
        | Some(TargetUnion::CreateRevision(v))
        | Some(TargetUnion::ModRevision(v))
        | Some(TargetUnion::Lease(v)) => *v,
        _ => 0,
    }
}

/// Sets the header revision of `resp` and of its puts' and deletes'
/// responses (nested ones too) to `rev`. A nested txn's own header is
/// empty, as etcd's (`newTxnResp` gives only the outer one a revision).
pub fn set_header_revision(resp: &mut TxnResponse, rev: i64) {
    resp.header = Some(ResponseHeader {
        revision: rev,
        ..Default::default()
    });
    set_ops_revision(&mut resp.responses, rev);
}

fn set_ops_revision(responses: &mut [ResponseOp], rev: i64) {
    let header = || {
        Some(ResponseHeader {
            revision: rev,
            ..Default::default()
        })
    };
    for op in responses {
        match &mut op.response {
            Some(Response::ResponsePut(r)) => r.header = header(),
            Some(Response::ResponseDeleteRange(r)) => r.header = header(),
            Some(Response::ResponseTxn(t)) => {
                t.header = Some(ResponseHeader::default());
                set_ops_revision(&mut t.responses, rev);
            }
            Some(Response::ResponseRange(_)) | None => {}
        }
    }
}

impl Writer<'_> {
    /// The outcome once `response` is computed: the store (at `revs`
    /// before) moves to this txn's revision if it wrote anything — or
    /// stays above it, for a part of a txn across regions committed below
    /// the region's newest revision.
    fn finish(mut self, response: TxnResponse, revs: Revisions, path: Vec<bool>) -> TxnOutcome {
        if !self.batch.is_empty() && revs.current <= 1 {
            // Nothing was written before (a fresh store is at revision 1
            // and every write moves it past 1), so every version this store
            // will hold gets its index entry: its index is complete from
            // the start.
            self.batch
                .put(Key::MvccByRevisionComplete.encode(), Vec::new());
        }
        let revisions = if self.batch.is_empty() {
            revs
        } else {
            Revisions {
                current: self.rev.max(revs.current),
                ..revs
            }
        };
        TxnOutcome {
            response,
            batch: self.batch,
            events: self.events,
            revisions,
            path,
        }
    }

    fn execute(
        &mut self,
        req: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<TxnResponse> {
        let succeeded = path.next().unwrap_or(false);
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(self.op(op, path)?);
        }
        Ok(TxnResponse {
            header: None,
            succeeded,
            responses,
        })
    }

    fn op(&mut self, op: &RequestOp, path: &mut impl Iterator<Item = bool>) -> Result<ResponseOp> {
        if !matches!(op.request, Some(Request::RequestTxn(_))) {
            self.sub = self.ops;
            self.ops = self.ops.saturating_add(1);
        }
        let response = match &op.request {
            Some(Request::RequestRange(r)) => Some(Response::ResponseRange(self.range(r)?)),
            Some(Request::RequestPut(p)) => Some(Response::ResponsePut(self.put(p)?)),
            Some(Request::RequestDeleteRange(d)) => {
                Some(Response::ResponseDeleteRange(self.delete(d)?))
            }
            Some(Request::RequestTxn(t)) => Some(Response::ResponseTxn(self.execute(t, path)?)),
            None => None,
        };
        Ok(ResponseOp { response })
    }

    /// Stores the version of `key` at this txn's revision, and its
    /// by-revision index entry with it.
    fn version(&mut self, key: &[u8], stored: Vec<u8>) {
        let rev = self.rev;
        self.batch
            .put(Key::MvccVersion { key, revision: rev }.encode(), stored);
        self.batch.put(
            Key::MvccByRevision { revision: rev, key }.encode(),
            encode_sub(self.sub),
        );
    }

    fn event(&mut self, event: Event) {
        self.events.push(Change {
            revision: self.rev,
            sub: self.sub,
            event,
        });
    }

    fn current(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => record::latest(self.read, key),
        }
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        if self.within.is_some() {
            return Ok(RangeResponse::default());
        }
        if self.read_at < self.revs.current {
            // Read as of `read_at` (`read_txn_at`): "now" is that revision.
            if req.revision > self.read_at {
                return Err(Error::from(Rejection::FutureRevision));
            }
            let as_of = RangeRequest {
                revision: if req.revision > 0 {
                    req.revision
                } else {
                    self.read_at
                },
                ..req.clone()
            };
            let mut resp = range_with(self.read, &as_of, self.revs, None)?;
            if let Some(h) = &mut resp.header {
                h.revision = self.read_at;
            }
            return Ok(resp);
        }
        // Reads at "now" see this txn's earlier writes; explicit revisions do not.
        let overlay = (req.revision <= 0).then_some(&self.overlay);
        let revs = if req.revision <= 0 && !self.batch.is_empty() {
            Revisions {
                current: self.rev,
                ..self.revs
            }
        } else {
            self.revs
        };
        let mut resp = range_with(self.read, req, revs, overlay)?;
        if let Some(h) = &mut resp.header {
            h.revision = revs.current;
        }
        Ok(resp)
    }

    fn put(&mut self, req: &PutRequest) -> Result<PutResponse> {
        if let Some((start, end)) = &self.within {
            let inside = req.key >= *start && (end.is_empty() || req.key < *end);
            if !inside {
                if self.index && req.lease != 0 && !req.ignore_lease {
                    // Attached in another region: the table records it
                    // (an older attachment of the key stays until its
                    // lease goes: see `crate::lease`).
                    self.batch.put(
                        Key::LeaseKey {
                            id: req.lease,
                            key: &req.key,
                        }
                        .encode(),
                        crate::lease::entry_value(self.rev),
                    );
                }
                return Ok(PutResponse::default());
            }
        }
        if self.check_leases && req.lease != 0 && !self.leases.exists(req.lease) {
            return Err(Error::from(Rejection::LeaseNotFound));
        }
        let prev = self.current(&req.key)?;
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(Error::from(Rejection::KeyNotFound));
        }
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(self.rev, |p| p.create_revision),
            mod_revision: self.rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: match (&prev, req.ignore_value) {
                (Some(p), true) => p.value.clone(),
                _ => req.value.clone(),
            },
            lease: match (&prev, req.ignore_lease) {
                (Some(p), true) => p.lease,
                _ => req.lease,
            },
        };
        if let Some(p) = prev
            .as_ref()
            .filter(|p| self.index && p.lease != 0 && p.lease != kv.lease)
        {
            self.batch.delete(
                Key::LeaseKey {
                    id: p.lease,
                    key: &req.key,
                }
                .encode(),
            );
        }
        if self.index && kv.lease != 0 {
            self.batch.put(
                Key::LeaseKey {
                    id: kv.lease,
                    key: &req.key,
                }
                .encode(),
                crate::lease::entry_value(self.rev),
            );
        }
        let stored = Record::Put(kv.clone()).encode();
        self.version(&req.key, stored.clone());
        self.batch
            .put(Key::MvccLatest { key: &req.key }.encode(), stored);
        self.event(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv.clone()),
            prev_kv: prev.clone(),
        });
        self.overlay.insert(req.key.clone(), Some(kv));
        Ok(PutResponse {
            header: None,
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    fn delete(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let span = match &self.within {
            None => Span::new(&req.key, &req.range_end),
            Some((start, end)) => {
                let whole = crate::locks::etcd_span(&req.key, &req.range_end);
                match crate::locks::clip(&whole, start, end) {
                    Some((s, e)) if e.is_empty() => Span::Range(s, None),
                    Some((s, e)) => Span::Range(s, Some(e)),
                    None => return Ok(DeleteRangeResponse::default()),
                }
            }
        };
        let doomed = visible(
            self.read,
            &span,
            self.revs.current,
            self.revs,
            Some(&self.overlay),
        )?;
        for kv in &doomed {
            self.version(&kv.key, Record::Tombstone.encode());
            self.batch.delete(Key::MvccLatest { key: &kv.key }.encode());
            if self.index && kv.lease != 0 {
                self.batch.delete(
                    Key::LeaseKey {
                        id: kv.lease,
                        key: &kv.key,
                    }
                    .encode(),
                );
            }
            let tomb = KeyValue {
                key: kv.key.clone(),
                mod_revision: self.rev,
                ..Default::default()
            };
            self.event(Event {
                r#type: EventType::Delete as i32,
                kv: Some(tomb),
                prev_kv: Some(kv.clone()),
            });
            self.overlay.insert(kv.key.clone(), None);
        }
        Ok(DeleteRangeResponse {
            header: None,
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
        })
    }
}
