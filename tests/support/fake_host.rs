//! A scripted stand-in for the OpenClaw host, for tests and benchmarks: it pulls a node's host
//! requests ([`HostBridge::next_request`]) and answers the agent requests of
//! `clawmatrix::handoff` the way `js/agents.ts` does on a real gateway, following a script chosen
//! per task text. It records every request (and when cancels and aborts arrived) so tests can
//! assert on them.
//!
//! Task scripts (first match wins):
//! - `stream N every M` → N deltas `chunk-1 ` … `chunk-N `, M ms apart, then result text = the
//!   deltas joined (`final empty` anywhere in the task makes the final text empty);
//! - `tools N every M` → N tool events M ms apart, then result `done`;
//! - `silent M then stream N` → nothing for M ms, then N deltas at once;
//! - `hang` → one delta `working…`, then nothing until cancelled;
//! - `quiet` → nothing until cancelled;
//! - `fail` → result `{status: "error", error: "scripted failure"}`;
//! - anything else → one delta = the task, result = the task.
//!
//! `stamp` mode (benchmarks): every delta is `"<seq>:<µs since epoch>;"` so the consumer can
//! compute latency against the same clock.

#![allow(dead_code)] // shared by several test and bench crates; each uses a subset

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use clawmatrix::error::{Error, ErrorCode};
use clawmatrix::handoff::{HOST_AGENTS_LIST, HOST_AGENT_ABORT, HOST_AGENT_RUN, HOST_AGENT_SEND};
use clawmatrix::host::{HostBridge, HostKind, HostReply, HostRequest, KIND_CANCEL};

/// What the fake host saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub kind: String,
    pub params: Value,
}

/// Options of a fake host.
#[derive(Debug, Clone)]
pub struct FakeHostOptions {
    /// Agent ids OpenClaw "knows" (answer of `agents.list`).
    pub agents: Vec<String>,
    /// Benchmark mode: deltas carry `<seq>:<µs since epoch>;`.
    pub stamp_epoch: Option<Instant>,
    /// Never answer `agent.run` (a node whose agent hangs before any output).
    pub silent_runs: bool,
    /// How long `agents.list` takes to answer (an OpenClaw whose event loop is stalled).
    pub agents_list_delay: Duration,
}

impl FakeHostOptions {
    /// Knows `agents`, scripted runs.
    pub fn agents(agents: &[&str]) -> Self {
        FakeHostOptions {
            agents: agents.iter().map(|a| a.to_string()).collect(),
            stamp_epoch: None,
            silent_runs: false,
            agents_list_delay: Duration::ZERO,
        }
    }
}

/// Handle to a running fake host.
#[derive(Clone)]
pub struct FakeHost {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Running scripted calls by host call id → the moment their task stopped (after a cancel).
    stopped: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl FakeHost {
    /// Attach to `bridge` and answer on the current runtime until the bridge closes.
    pub fn spawn(bridge: Arc<HostBridge>, opts: FakeHostOptions) -> FakeHost {
        let me = FakeHost {
            seen: Arc::new(Mutex::new(Vec::new())),
            stopped: Arc::new(Mutex::new(HashMap::new())),
        };
        let this = me.clone();
        tokio::spawn(async move {
            let mut running: HashMap<u64, tokio::task::JoinHandle<()>> = HashMap::new();
            while let Some(req) = bridge.next_request().await {
                this.record(&req);
                running.retain(|_, h| !h.is_finished());
                if req.kind == KIND_CANCEL {
                    if let Some(id) = req.params.get("id").and_then(Value::as_u64) {
                        if let Some(h) = running.remove(&id) {
                            h.abort();
                            this.lock_stopped().insert(id, Instant::now());
                        }
                    }
                    continue;
                }
                let b = Arc::clone(&bridge);
                let opts = opts.clone();
                let rid = req.id;
                let h = tokio::spawn(async move { answer(b, req, opts).await });
                running.insert(rid, h);
            }
        });
        me
    }

    fn record(&self, req: &HostRequest) {
        let mut p = req.params.clone();
        if let Value::Object(m) = &mut p {
            m.insert("_id".into(), json!(req.id));
        }
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Seen {
                at: Instant::now(),
                kind: req.kind.as_str().to_string(),
                params: p,
            });
    }

    fn lock_stopped(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// When the scripted task of host call `id` was stopped by a cancel, if it was.
    pub fn stopped_at(&self, id: u64) -> Option<Instant> {
        self.lock_stopped().get(&id).copied()
    }

    /// Requests of one kind.
    pub fn seen_kind(&self, kind: HostKind) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.kind == kind.as_str())
            .collect()
    }
}

async fn answer(bridge: Arc<HostBridge>, req: HostRequest, opts: FakeHostOptions) {
    let id = req.id;
    let ev = |v: Value| {
        bridge.reply(id, Ok(HostReply::Event(v)));
    };
    let done = |v: Value| {
        bridge.reply(id, Ok(HostReply::Result(v)));
    };
    match req.kind {
        HOST_AGENTS_LIST => {
            tokio::time::sleep(opts.agents_list_delay).await;
            done(json!({"agents": opts.agents}))
        }
        HOST_AGENT_SEND => done(json!({"runId": format!("send-{id}")})),
        HOST_AGENT_ABORT => done(json!({"aborted": true, "drained": true})),
        HOST_AGENT_RUN if opts.silent_runs => std::future::pending::<()>().await,
        HOST_AGENT_RUN => {
            let task = req
                .params
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let run_id = format!("run-{id}");
            ev(json!({"type": "started", "runId": run_id}));
            let mut out = String::new();
            let mut seq: u64 = 0;
            let mut delta = |out: &mut String, text: String| {
                let text = match opts.stamp_epoch {
                    Some(epoch) => {
                        let t = format!("{seq}:{};", epoch.elapsed().as_micros());
                        seq += 1;
                        t
                    }
                    None => text,
                };
                out.push_str(&text);
                bridge.reply(
                    id,
                    Ok(HostReply::Event(json!({"type": "delta", "text": text}))),
                );
            };
            let words: Vec<&str> = task.split_whitespace().collect();
            let num = |k: &str| -> Option<u64> {
                let i = words.iter().position(|w| *w == k)?;
                words.get(i + 1)?.parse().ok()
            };
            if words.first() == Some(&"stream") {
                let n = words.get(1).and_then(|w| w.parse().ok()).unwrap_or(1u64);
                let every = num("every").unwrap_or(0);
                let mut next = tokio::time::Instant::now();
                for i in 1..=n {
                    if every > 0 && i > 1 {
                        next += Duration::from_millis(every);
                        tokio::time::sleep_until(next).await;
                    }
                    delta(&mut out, format!("chunk-{i} "));
                }
                let text = if task.contains("final empty") {
                    String::new()
                } else {
                    out
                };
                done(json!({"status": "ok", "text": text, "runId": run_id}));
            } else if words.first() == Some(&"tools") {
                let n = words.get(1).and_then(|w| w.parse().ok()).unwrap_or(1u64);
                let every = num("every").unwrap_or(0);
                for _ in 0..n {
                    tokio::time::sleep(Duration::from_millis(every)).await;
                    ev(json!({"type": "tool", "name": "exec", "phase": "start"}));
                }
                done(json!({"status": "ok", "text": "done", "runId": run_id}));
            } else if words.first() == Some(&"silent") {
                let ms = words.get(1).and_then(|w| w.parse().ok()).unwrap_or(0u64);
                let n = num("stream").unwrap_or(1);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                for i in 1..=n {
                    delta(&mut out, format!("late-{i} "));
                }
                done(json!({"status": "ok", "text": out, "runId": run_id}));
            } else if words.first() == Some(&"hang") {
                delta(&mut out, "working…".into());
                std::future::pending::<()>().await;
            } else if words.first() == Some(&"quiet") {
                std::future::pending::<()>().await;
            } else if words.first() == Some(&"fail") {
                done(json!({"status": "error", "error": "scripted failure", "runId": run_id}));
            } else {
                delta(&mut out, task.clone());
                done(json!({"status": "ok", "text": task, "runId": run_id}));
            }
        }
        other => {
            bridge.reply(
                id,
                Err(Error::new(
                    ErrorCode::NotImplemented,
                    format!("fake host: no handler for {other}"),
                )),
            );
        }
    }
}
