//! The handoff log behind `clawmatrix.status` → `handoffs`: counters and the most recent
//! handoffs of both sides (bounded).

use super::*;

/// One handoff as the status report shows it (caller or server side).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoffRecord {
    /// `caller` or `server`.
    pub role: &'static str,
    pub id: String,
    /// The other node (the serving node for a caller, the calling node for a server).
    pub peer: String,
    pub agent: String,
    /// `running`, `ok`, `error`, `timeout`, `cancelled`.
    pub state: String,
    pub chunks: u64,
    pub chars: u64,
    pub started_ms_ago: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_chunk_ms: Option<u64>,
    /// Server: the OpenClaw session key and run id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Server, after a cancel: from the cancel reaching this node to OpenClaw confirming the run
    /// stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_to_stop_ms: Option<u64>,
    /// Caller: the last characters streamed so far (what the remote agent is writing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail: Option<String>,
    /// Caller: the accumulated deltas equal the final reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_matches_final: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub(super) started: Option<Instant>,
}

/// Counters, the running handoffs and the most recent finished ones, shared by the service and
/// the caller side.
///
/// Running handoffs are kept by `(role, id)` until they end, however many there are (each side
/// bounds them: a server serves at most `MAX_SERVED_CALLS` calls, a caller runs one per tool
/// call), so a handoff that started long ago still ends in the count and the list; finished ones
/// go to a ring of [`RECENT_HANDOFFS`]. The status report lists the most recent
/// [`RECENT_HANDOFFS`] of both by start time.
#[derive(Default)]
pub struct HandoffLog {
    inner: Mutex<LogInner>,
}

#[derive(Default)]
struct LogInner {
    running: std::collections::HashMap<(&'static str, String), HandoffRecord>,
    finished: std::collections::VecDeque<HandoffRecord>,
    served: u64,
    called: u64,
    sent: u64,
    received: u64,
}

impl HandoffLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn begin(&self, mut r: HandoffRecord) {
        r.started = Some(Instant::now());
        r.state = "running".into();
        let mut g = self.lock();
        if r.role == "server" {
            g.served += 1;
        } else {
            g.called += 1;
        }
        let key = (r.role, r.id.clone());
        if let Some(old) = g.running.insert(key, r) {
            // The same id twice (a peer reusing a handoff id): the older one is over for us.
            g.finish(old);
        }
    }

    /// Change a handoff's record; a state other than `running` ends it (its duration is set and
    /// it moves to the finished ring). Records already finished can still be amended.
    pub(super) fn update(&self, role: &'static str, id: &str, f: impl FnOnce(&mut HandoffRecord)) {
        let mut g = self.lock();
        let key = (role, id.to_string());
        if let Some(r) = g.running.get_mut(&key) {
            f(r);
            if r.state != "running" {
                if let Some(done) = g.running.remove(&key) {
                    g.finish(done);
                }
            }
        } else if let Some(r) = g
            .finished
            .iter_mut()
            .rev()
            .find(|r| r.role == role && r.id == id)
        {
            f(r);
        }
    }

    pub(super) fn count_send(&self, received: bool) {
        let mut g = self.lock();
        if received {
            g.received += 1;
        } else {
            g.sent += 1;
        }
    }

    /// The `handoffs` section of the status report.
    pub fn to_json(&self) -> Value {
        let g = self.lock();
        let mut all: Vec<&HandoffRecord> = g.running.values().chain(g.finished.iter()).collect();
        all.sort_by_key(|r| r.started);
        let skip = all.len().saturating_sub(RECENT_HANDOFFS);
        let recent: Vec<Value> = all[skip..]
            .iter()
            .map(|r| {
                let mut r = (*r).clone();
                r.started_ms_ago = r
                    .started
                    .map(|s| s.elapsed().as_millis() as u64)
                    .unwrap_or(0);
                serde_json::to_value(r).unwrap_or(Value::Null)
            })
            .collect();
        json!({
            "served": g.served,
            "called": g.called,
            "running": g.running.len(),
            "messagesSent": g.sent,
            "messagesReceived": g.received,
            "recent": recent,
        })
    }
}

impl LogInner {
    fn finish(&mut self, mut r: HandoffRecord) {
        r.duration_ms = r.started.map(|s| s.elapsed().as_millis() as u64);
        if self.finished.len() >= RECENT_HANDOFFS {
            self.finished.pop_front();
        }
        self.finished.push_back(r);
    }
}

/// Characters of output kept in a caller record's `tail`.
pub(super) const TAIL_CHARS: usize = 160;

pub(super) fn tail_of(s: &str) -> String {
    let start = s
        .char_indices()
        .rev()
        .nth(TAIL_CHARS - 1)
        .map(|(i, _)| i)
        .unwrap_or(0);
    s[start..].to_string()
}
