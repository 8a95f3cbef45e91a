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

/// Counters and the most recent handoffs, shared by the service and the caller side.
#[derive(Default)]
pub struct HandoffLog {
    inner: Mutex<LogInner>,
}

#[derive(Default)]
struct LogInner {
    recent: std::collections::VecDeque<HandoffRecord>,
    served: u64,
    called: u64,
    sent: u64,
    received: u64,
    running: u64,
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
        g.running += 1;
        if g.recent.len() >= RECENT_HANDOFFS {
            g.recent.pop_front();
        }
        g.recent.push_back(r);
    }

    pub(super) fn update(&self, role: &str, id: &str, f: impl FnOnce(&mut HandoffRecord)) {
        let mut g = self.lock();
        if let Some(r) = g
            .recent
            .iter_mut()
            .rev()
            .find(|r| r.role == role && r.id == id)
        {
            let was_running = r.state == "running";
            f(r);
            if was_running && r.state != "running" {
                r.duration_ms = r.started.map(|s| s.elapsed().as_millis() as u64);
                g.running = g.running.saturating_sub(1);
            }
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
        let recent: Vec<Value> = g
            .recent
            .iter()
            .map(|r| {
                let mut r = r.clone();
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
            "running": g.running,
            "messagesSent": g.sent,
            "messagesReceived": g.received,
            "recent": recent,
        })
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
