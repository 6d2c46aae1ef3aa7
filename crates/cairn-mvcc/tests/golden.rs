//! Golden-script tests of etcd's MVCC semantics.
//!
//! Each file in `tests/scripts/` is a list of commands, each followed by its
//! expected output on lines starting with `> `. Every script runs against
//! both engines. `GOLDEN_UPDATE=1 cargo test -p cairn-mvcc --test golden`
//! rewrites the expected output (review the diff!).
//!
//! Commands (keys: `\0` and `\xNN` escapes; `""` is the empty key):
//! - `put KEY VALUE [prev_kv] [ignore_value] [ignore_lease] [lease=N] [@REV]`
//! - `get KEY [END] [rev=N] [limit=N] [sort=key|version|create|mod|value]
//!    [order=none|asc|desc] [keys_only] [count_only] [min_mod=N] [max_mod=N]
//!    [min_create=N] [max_create=N]`
//! - `del KEY [END] [prev_kv] [@REV]`
//! - `txn CMP... ? OP... : OP... [@REV]` with CMP like `value(k)=v`,
//!   `mod(a..c)>3`, `version(k)!=0`, `create(k)<5`, `lease(k)=0` and OP one
//!   of `put(k,v)`, `get(k)`, `get(a..c)`, `del(k)`, `del(a..c)`
//! - `compact REV`
//!
//! Writes use revision `current + 1` unless `@REV` names one (to mimic the
//! sparse TSO revisions Cairn uses).

use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::request_op::Request;
use cairn_api::etcdserverpb::response_op::Response;
use cairn_api::etcdserverpb::*;
use cairn_api::mvccpb::KeyValue;
use cairn_mvcc::{Limits, NoLeases, Revisions};
use cairn_storage::{Durability, Engine, FjallEngine, MemoryEngine};

fn unescape(s: &str) -> Vec<u8> {
    if s == "\"\"" {
        return Vec::new();
    }
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() && b[i + 1] == b'0' {
            out.push(0);
            i += 2;
        } else if b[i] == b'\\' && i + 3 < b.len() && b[i + 1] == b'x' {
            out.push(u8::from_str_radix(&s[i + 2..i + 4], 16).unwrap());
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn show(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if c.is_ascii_graphic() {
                (c as char).to_string()
            } else {
                format!("\\x{c:02x}")
            }
        })
        .collect()
}

fn show_kv(kv: &KeyValue) -> String {
    let mut s = format!(
        "{}={} create={} mod={} ver={}",
        show(&kv.key),
        show(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version
    );
    if kv.lease != 0 {
        s += &format!(" lease={}", kv.lease);
    }
    s
}

struct Flags<'a> {
    words: Vec<&'a str>,
    rev: Option<i64>,
}

impl<'a> Flags<'a> {
    fn parse(args: &[&'a str]) -> Self {
        let mut words = Vec::new();
        let mut rev = None;
        for a in args {
            match a.strip_prefix('@') {
                Some(r) => rev = Some(r.parse().unwrap()),
                None => words.push(*a),
            }
        }
        Flags { words, rev }
    }
    fn has(&self, f: &str) -> bool {
        self.words.contains(&f)
    }
    fn num(&self, f: &str) -> i64 {
        self.words
            .iter()
            .find_map(|w| w.strip_prefix(&format!("{f}=")))
            .map_or(0, |v| v.parse().unwrap())
    }
    fn word(&self, f: &str) -> Option<&'a str> {
        self.words
            .iter()
            .find_map(|w| w.strip_prefix(f).and_then(|r| r.strip_prefix('=')))
    }
    fn positional(&self) -> Vec<&'a str> {
        const FLAGS: [&str; 5] = [
            "prev_kv",
            "ignore_value",
            "ignore_lease",
            "keys_only",
            "count_only",
        ];
        self.words
            .iter()
            .copied()
            .filter(|w| (!w.contains('=') || w.starts_with('"')) && !FLAGS.contains(w))
            .collect()
    }
}

fn span(s: &str) -> (Vec<u8>, Vec<u8>) {
    match s.split_once("..") {
        Some((a, b)) => (unescape(a), unescape(b)),
        None => (unescape(s), Vec::new()),
    }
}

fn parse_op(s: &str) -> RequestOp {
    let (name, rest) = s.split_once('(').unwrap();
    let inner = rest.strip_suffix(')').unwrap();
    let request = match name {
        "put" => {
            let (k, v) = inner.split_once(',').unwrap();
            Request::RequestPut(PutRequest {
                key: unescape(k),
                value: unescape(v),
                ..Default::default()
            })
        }
        "get" => {
            let (key, range_end) = span(inner);
            Request::RequestRange(RangeRequest {
                key,
                range_end,
                ..Default::default()
            })
        }
        "del" => {
            let (key, range_end) = span(inner);
            Request::RequestDeleteRange(DeleteRangeRequest {
                key,
                range_end,
                ..Default::default()
            })
        }
        other => panic!("unknown op {other}"),
    };
    RequestOp {
        request: Some(request),
    }
}

fn parse_cmp(s: &str) -> Compare {
    let (name, rest) = s.split_once('(').unwrap();
    let (target_span, cond) = rest.split_once(')').unwrap();
    let (key, range_end) = span(target_span);
    let (result, value) = if let Some(v) = cond.strip_prefix("!=") {
        (CompareResult::NotEqual, v)
    } else if let Some(v) = cond.strip_prefix('=') {
        (CompareResult::Equal, v)
    } else if let Some(v) = cond.strip_prefix('>') {
        (CompareResult::Greater, v)
    } else if let Some(v) = cond.strip_prefix('<') {
        (CompareResult::Less, v)
    } else {
        panic!("bad compare {s}")
    };
    let (target, union) = match name {
        "value" => (CompareTarget::Value, TargetUnion::Value(unescape(value))),
        "version" => (
            CompareTarget::Version,
            TargetUnion::Version(value.parse().unwrap()),
        ),
        "create" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(value.parse().unwrap()),
        ),
        "mod" => (
            CompareTarget::Mod,
            TargetUnion::ModRevision(value.parse().unwrap()),
        ),
        "lease" => (
            CompareTarget::Lease,
            TargetUnion::Lease(value.parse().unwrap()),
        ),
        other => panic!("bad compare target {other}"),
    };
    Compare {
        result: result as i32,
        target: target as i32,
        key,
        range_end,
        target_union: Some(union),
    }
}

struct Runner {
    engine: Box<dyn Engine>,
    revs: Revisions,
}

impl Runner {
    fn write(
        &mut self,
        req: TxnRequest,
        rev: Option<i64>,
        out: &mut Vec<String>,
    ) -> Option<TxnResponse> {
        if let Err(e) = cairn_mvcc::validate_txn(&req, Limits { max_txn_ops: 4 }) {
            out.push(format!("error: {e}"));
            return None;
        }
        let rev = rev.unwrap_or(self.revs.current + 1);
        // A read-only txn is served without a proposal (`read_txn`); it must
        // answer exactly what applying it would.
        let read_only = cairn_mvcc::is_read_only(&req).then(|| {
            cairn_mvcc::read_txn(&*self.engine, &req, self.revs).map_err(|e| e.to_string())
        });
        match cairn_mvcc::apply_txn(&*self.engine, &req, rev, self.revs, &NoLeases) {
            Ok(o) => {
                if let Some(r) = read_only {
                    assert_eq!(
                        r.as_ref(),
                        Ok(&o.response),
                        "read_txn differs from apply_txn"
                    );
                    assert!(o.batch.is_empty(), "a read-only txn wrote");
                }
                self.engine.write(o.batch, Durability::Buffered).unwrap();
                self.revs = o.revisions;
                Some(o.response)
            }
            Err(e) => {
                if let Some(r) = read_only {
                    assert_eq!(r, Err(e.to_string()), "read_txn differs from apply_txn");
                }
                out.push(format!("error: {e}"));
                None
            }
        }
    }

    fn show_range(resp: &RangeResponse, out: &mut Vec<String>) {
        out.push(format!(
            "rev={} count={} more={}",
            resp.header.as_ref().unwrap().revision,
            resp.count,
            resp.more
        ));
        for kv in &resp.kvs {
            out.push(format!("  {}", show_kv(kv)));
        }
    }

    fn show_response(op: &ResponseOp, out: &mut Vec<String>) {
        match &op.response {
            Some(Response::ResponseRange(r)) => Self::show_range(r, out),
            Some(Response::ResponsePut(p)) => {
                out.push("put ok".into());
                if let Some(kv) = &p.prev_kv {
                    out.push(format!("  prev {}", show_kv(kv)));
                }
            }
            Some(Response::ResponseDeleteRange(d)) => {
                out.push(format!("deleted={}", d.deleted));
                for kv in &d.prev_kvs {
                    out.push(format!("  prev {}", show_kv(kv)));
                }
            }
            Some(Response::ResponseTxn(_)) | None => out.push("?".into()),
        }
    }

    fn run(&mut self, line: &str) -> Vec<String> {
        let mut out = Vec::new();
        let parts: Vec<&str> = line.split_whitespace().collect();
        let f = Flags::parse(&parts[1..]);
        match parts[0] {
            "put" => {
                let pos = f.positional();
                let req = PutRequest {
                    key: unescape(pos[0]),
                    value: pos.get(1).map(|v| unescape(v)).unwrap_or_default(),
                    lease: f.num("lease"),
                    prev_kv: f.has("prev_kv"),
                    ignore_value: f.has("ignore_value"),
                    ignore_lease: f.has("ignore_lease"),
                };
                if let Err(e) = cairn_mvcc::validate_put(&req) {
                    out.push(format!("error: {e}"));
                    return out;
                }
                let txn = TxnRequest {
                    success: vec![RequestOp {
                        request: Some(Request::RequestPut(req)),
                    }],
                    ..Default::default()
                };
                if let Some(resp) = self.write(txn, f.rev, &mut out) {
                    out.push(format!("rev={}", resp.header.unwrap().revision));
                    if let Some(Response::ResponsePut(p)) = &resp.responses[0].response {
                        if let Some(kv) = &p.prev_kv {
                            out.push(format!("  prev {}", show_kv(kv)));
                        }
                    }
                }
            }
            "get" => {
                let pos = f.positional();
                let sort_target = match f.word("sort") {
                    None | Some("key") => 0,
                    Some("version") => 1,
                    Some("create") => 2,
                    Some("mod") => 3,
                    Some("value") => 4,
                    Some(other) => other.parse().unwrap(),
                };
                let sort_order = match f.word("order") {
                    None | Some("none") => 0,
                    Some("asc") => 1,
                    Some("desc") => 2,
                    Some(other) => other.parse().unwrap(),
                };
                let req = RangeRequest {
                    key: unescape(pos[0]),
                    range_end: pos.get(1).map(|v| unescape(v)).unwrap_or_default(),
                    limit: f.num("limit"),
                    revision: f.num("rev"),
                    sort_order,
                    sort_target,
                    keys_only: f.has("keys_only"),
                    count_only: f.has("count_only"),
                    min_mod_revision: f.num("min_mod"),
                    max_mod_revision: f.num("max_mod"),
                    min_create_revision: f.num("min_create"),
                    max_create_revision: f.num("max_create"),
                    ..Default::default()
                };
                match cairn_mvcc::validate_range(&req)
                    .and_then(|_| cairn_mvcc::range(&*self.engine, &req, self.revs))
                {
                    Ok(resp) => Self::show_range(&resp, &mut out),
                    Err(e) => out.push(format!("error: {e}")),
                }
            }
            "del" => {
                let pos = f.positional();
                let req = DeleteRangeRequest {
                    key: unescape(pos[0]),
                    range_end: pos.get(1).map(|v| unescape(v)).unwrap_or_default(),
                    prev_kv: f.has("prev_kv"),
                };
                if let Err(e) = cairn_mvcc::validate_delete(&req) {
                    out.push(format!("error: {e}"));
                    return out;
                }
                let txn = TxnRequest {
                    success: vec![RequestOp {
                        request: Some(Request::RequestDeleteRange(req)),
                    }],
                    ..Default::default()
                };
                if let Some(resp) = self.write(txn, f.rev, &mut out) {
                    out.push(format!("rev={}", resp.header.unwrap().revision));
                    Self::show_response(&resp.responses[0], &mut out);
                }
            }
            "txn" => {
                let body = line.strip_prefix("txn").unwrap();
                let (body, rev) = match body.rsplit_once(" @") {
                    Some((b, r)) => (b, Some(r.trim().parse().unwrap())),
                    None => (body, None),
                };
                let (cmps, rest) = body.split_once(" ? ").unwrap();
                let (then, els) = rest.split_once(" : ").unwrap_or((rest, ""));
                let req = TxnRequest {
                    compare: cmps.split_whitespace().map(parse_cmp).collect(),
                    success: then.split_whitespace().map(parse_op).collect(),
                    failure: els.split_whitespace().map(parse_op).collect(),
                };
                if let Some(resp) = self.write(req, rev, &mut out) {
                    out.push(format!(
                        "rev={} succeeded={}",
                        resp.header.unwrap().revision,
                        resp.succeeded
                    ));
                    for r in &resp.responses {
                        Self::show_response(r, &mut out);
                    }
                }
            }
            "compact" => {
                match cairn_mvcc::compact(&*self.engine, parts[1].parse().unwrap(), self.revs) {
                    Ok((batch, revs)) => {
                        self.engine.write(batch, Durability::Buffered).unwrap();
                        self.revs = revs;
                        out.push(format!("compacted={}", revs.compacted));
                    }
                    Err(e) => out.push(format!("error: {e}")),
                }
            }
            other => panic!("unknown command {other}"),
        }
        out
    }
}

fn run_script(path: &std::path::Path, engine: Box<dyn Engine>) -> (String, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut runner = Runner {
        engine,
        revs: Revisions::default(),
    };
    let mut actual = String::new();
    for line in text.lines() {
        if line.starts_with("> ") || line == ">" {
            continue;
        }
        actual.push_str(line);
        actual.push('\n');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        for o in runner.run(line) {
            actual.push_str(&format!("> {o}\n"));
        }
    }
    (text, actual)
}

#[test]
fn golden_scripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty());
    let update = std::env::var("GOLDEN_UPDATE").is_ok();
    let mut failures = Vec::new();
    for path in paths {
        let tmp = tempfile::tempdir().unwrap();
        let engines: Vec<(&str, Box<dyn Engine>)> = vec![
            ("memory", Box::new(MemoryEngine::new())),
            ("fjall", Box::new(FjallEngine::open(tmp.path()).unwrap())),
        ];
        for (name, engine) in engines {
            let (expected, actual) = run_script(&path, engine);
            if update && name == "memory" {
                std::fs::write(&path, &actual).unwrap();
            } else if expected != actual {
                failures.push(format!(
                    "{} on {name}:\n{}",
                    path.display(),
                    diff(&expected, &actual)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches:\n{}",
        failures.join("\n")
    );
}

fn diff(expected: &str, actual: &str) -> String {
    let mut out = String::new();
    for (i, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
        if e != a {
            out += &format!("line {}:\n  expected: {e}\n  actual:   {a}\n", i + 1);
        }
    }
    if expected.lines().count() != actual.lines().count() {
        out += "  (line counts differ)\n";
    }
    out
}
