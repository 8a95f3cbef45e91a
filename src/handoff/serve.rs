//! The serving side: the `agent.handoff` and `agent.send` services, which check the agent (the
//! access rules for the calling node first, then `agents[]` and OpenClaw) and run it through
//! the host bridge (`agent.run` / `agent.abort` / `agent.send`).

use super::relay::serve_handoff;
use super::*;
use crate::access::{Access, Kind};
use crate::host::{fmt_secs, HostDeadline};

/// The deadline of the host round trip that checks a handoff's agent (`agents.list`). No output
/// flows to the caller meanwhile, so it must answer within the caller's `handoffTimeout`
/// (sent as the call's mesh deadline, which is `handoffTimeout` + [`MESH_DEADLINE_SLACK`]) and
/// within the run's bound `max_ms` (the caller's remaining `handoffMaxMs`, at most this node's),
/// whichever is smaller, less the answer's way back.
pub(super) fn handoff_deadline(caller: Option<Duration>, max_ms: u64, from: &str) -> HostDeadline {
    let idle = caller.map(|d| {
        let idle = if d > MESH_DEADLINE_SLACK {
            d - MESH_DEADLINE_SLACK
        } else {
            d
        };
        (
            idle,
            format!(
                "the handoff's handoffTimeout ({}, sent by {from})",
                fmt_secs(idle)
            ),
        )
    });
    let cap = Duration::from_millis(max_ms);
    let cap = (
        cap,
        format!("the handoff's handoffMaxMs ({} left)", fmt_secs(cap)),
    );
    HostDeadline::serving([idle, Some(cap)])
}

/// The deadline of a message's host round trips (`agents.list`, then `agent.send`, together):
/// the caller's deadline for the call, at most [`SEND_TIMEOUT`], less the answer's way back.
fn send_deadline(caller: Option<Duration>, from: &str) -> HostDeadline {
    HostDeadline::serving([
        caller.map(|d| {
            (
                d,
                format!("cluster_send's deadline ({}, sent by {from})", fmt_secs(d)),
            )
        }),
        Some((
            SEND_TIMEOUT,
            format!(
                "cluster_send's bound on this node ({})",
                fmt_secs(SEND_TIMEOUT)
            ),
        )),
    ])
}

/// What both serving methods need.
#[derive(Clone)]
pub struct AgentHost {
    pub node_id: String,
    /// The agent ids this node offers (`agents[]`).
    pub offered: Vec<String>,
    pub host: Arc<HostBridge>,
    /// This node's `handoffMaxMs`: the run is bounded by the smaller of it and the caller's.
    pub max_ms: u64,
    pub log: Arc<HandoffLog>,
    /// This node's access rules (`access`), checked for every request (kind `agent`).
    pub access: Arc<Access>,
    /// This node's `hostTimeoutMs`: how long OpenClaw may take to confirm the abort of a run
    /// the caller gave up on (that round trip serves no waiting caller).
    pub host_timeout_ms: u64,
}

impl AgentHost {
    /// The agent to run: one the access rules let `from` (through `caller_agent`) use, offered
    /// here and known to OpenClaw (asked by `deadline`). The rules are checked before anything
    /// else is looked at.
    pub(super) async fn check_agent(
        &self,
        from: &str,
        caller_agent: Option<&str>,
        requested: Option<&str>,
        deadline: &HostDeadline,
    ) -> Result<String> {
        let agent = match requested {
            Some(a) => a.to_string(),
            None => self.offered.first().cloned().ok_or_else(|| {
                Error::new(
                    ErrorCode::NotFound,
                    format!("{} offers no agents (agents[] is empty)", self.node_id),
                )
            })?,
        };
        self.access
            .decide(from, caller_agent, Kind::Agent, &agent)
            .map_err(Error::from)?;
        if !self.offered.contains(&agent) {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!(
                    "agent {agent:?} is not offered by {} (agents[]: {})",
                    self.node_id,
                    list_or_none(&self.offered)
                ),
            ));
        }
        let listed = self
            .host
            .call(HOST_AGENTS_LIST, json!({}))?
            .result_by(deadline)
            .await?;
        let known: Vec<String> = match listed.get("agents").and_then(Value::as_array) {
            Some(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            None => {
                return Err(Error::new(
                    ErrorCode::Internal,
                    format!("host agents.list: expected {{agents: [ids]}}, got {listed}"),
                ))
            }
        };
        if !known.contains(&agent) {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!(
                    "agent {agent:?} is offered by {} but OpenClaw there has no such agent \
                     (agents.list: {})",
                    self.node_id,
                    list_or_none(&known)
                ),
            ));
        }
        Ok(agent)
    }
}

/// Who a handoff or message comes from, as the serving agent reads it: the calling agent (its
/// id, already checked to be an id) on the calling node (the authenticated source of the call,
/// never a payload field).
pub(super) fn origin(caller_agent: Option<&str>, from: &str) -> String {
    match caller_agent {
        Some(a) => format!("agent {a} on {from}"),
        None => from.to_string(),
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The `agent.handoff` service.
pub struct HandoffService(pub AgentHost);

impl Service for HandoffService {
    fn call(&self, ctx: CallCtx, payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> {
        let h = self.0.clone();
        Box::pin(async move {
            let req = handoff_request(&payload)?;
            let out = match serve_handoff(&h, ctx, req).await {
                Ok(v) => v,
                Err(e) => json!({"ok": false, "code": e.code.as_str(), "message": e.message}),
            };
            Ok(out.to_string().into_bytes())
        })
    }
}

/// Read and check an `agent.handoff` request; a refusal names the field.
fn handoff_request(payload: &[u8]) -> Result<HandoffRequest> {
    let req: HandoffRequest =
        serde_json::from_slice(payload).map_err(|e| invalid("agent.handoff request", e))?;
    if req.task.trim().is_empty() {
        return Err(invalid("agent.handoff request.task", "must not be empty"));
    }
    // Both end up in OpenClaw's session (key, prompt): only their documented forms.
    if !valid_handoff_id(&req.handoff_id) {
        return Err(invalid(
            "agent.handoff request.handoffId",
            format!(
                "must be 32 lowercase hex digits, optionally followed by -r1 … -r{MAX_RETRIES}, \
                 got {}",
                excerpt(&req.handoff_id)
            ),
        ));
    }
    check_caller_agent("agent.handoff", req.caller_agent.as_deref())?;
    Ok(req)
}

/// The `agent.send` service.
pub struct SendService(pub AgentHost);

impl Service for SendService {
    fn call(&self, ctx: CallCtx, payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> {
        let h = self.0.clone();
        Box::pin(async move {
            let req = send_request(&payload)?;
            let deadline = send_deadline(ctx.deadline, &ctx.from);
            let out = match serve_send(&h, &ctx.from, req, &deadline).await {
                Ok(v) => v,
                Err(e) => json!({"ok": false, "code": e.code.as_str(), "message": e.message}),
            };
            Ok(out.to_string().into_bytes())
        })
    }
}

/// Read and check an `agent.send` request; a refusal names the field.
fn send_request(payload: &[u8]) -> Result<SendRequest> {
    let req: SendRequest =
        serde_json::from_slice(payload).map_err(|e| invalid("agent.send request", e))?;
    if req.message.trim().is_empty() {
        return Err(invalid("agent.send request.message", "must not be empty"));
    }
    check_caller_agent("agent.send", req.caller_agent.as_deref())?;
    Ok(req)
}

async fn serve_send(
    h: &AgentHost,
    from: &str,
    req: SendRequest,
    deadline: &HostDeadline,
) -> Result<Value> {
    let agent = h
        .check_agent(
            from,
            req.caller_agent.as_deref(),
            req.agent.as_deref(),
            deadline,
        )
        .await?;
    let session_key = send_session_key(&agent);
    let who = origin(req.caller_agent.as_deref(), from);
    let text = format!(
        "[ClawMatrix message from {who}; one-way, no reply is expected by the sender]\n{}",
        req.message
    );
    let v = h
        .host
        .call(
            HOST_AGENT_SEND,
            json!({"agentId": agent, "sessionKey": session_key, "message": text}),
        )?
        .result_by(deadline)
        .await?;
    h.log.count_send(true);
    Ok(json!({
        "ok": true,
        "delivered": true,
        "node": h.node_id,
        "agent": agent,
        "sessionKey": session_key,
        "runId": v.get("runId").cloned().unwrap_or(Value::Null),
    }))
}

/// The serving side against an OpenClaw whose event loop is stalled: its answers come late, the
/// host round trips wait as long as the call's own timeouts allow (tokio's paused clock: the
/// 12 s pass at once).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccessConfig;
    use crate::proto::CallId;
    use crate::rpc::port::WaitingSend;
    use crate::rpc::{ChunkSink, Command, Port};
    use tokio::sync::Semaphore;

    /// Where the served calls' chunks go: nowhere (only the end payload is looked at).
    struct NullPort;

    impl Port for NullPort {
        fn try_send(
            &self,
            _cmd: Command,
        ) -> std::result::Result<(), mpsc::error::TrySendError<Command>> {
            Ok(())
        }

        fn send_waiting(&self, _cmd: Command) -> WaitingSend<'_> {
            Box::pin(async { true })
        }
    }

    /// A stalled OpenClaw: answers `agents.list` (`coder`) after `delay`, everything else at once.
    async fn slow_host(delay: Duration) -> Arc<HostBridge> {
        let bridge = HostBridge::new();
        let b = Arc::clone(&bridge);
        tokio::spawn(async move {
            while let Some(req) = b.next_request().await {
                let b = Arc::clone(&b);
                tokio::spawn(async move {
                    let v = match req.kind {
                        HostKind::AgentsList => {
                            tokio::time::sleep(delay).await;
                            json!({"agents": ["coder"]})
                        }
                        HostKind::AgentRun => {
                            json!({"status": "ok", "text": "done", "runId": "r1"})
                        }
                        HostKind::AgentSend => json!({"runId": "r2"}),
                        HostKind::AgentAbort => json!({"aborted": true}),
                        _ => return,
                    };
                    b.reply(req.id, Ok(crate::host::HostReply::Result(v)));
                });
            }
        });
        // Let the host attach (its first pull) before anything calls it.
        while !bridge.attached() {
            tokio::task::yield_now().await;
        }
        bridge
    }

    fn agent_host(host: Arc<HostBridge>) -> AgentHost {
        AgentHost {
            node_id: "office".into(),
            offered: vec!["coder".into()],
            host,
            max_ms: crate::config::DEFAULT_HANDOFF_MAX_MS,
            log: Arc::new(HandoffLog::default()),
            access: Access::new(&AccessConfig::default()),
            host_timeout_ms: crate::config::DEFAULT_HOST_TIMEOUT_MS,
        }
    }

    /// A call from `home` whose caller waits `deadline` (its `call` frame's `deadline_ms`).
    fn call_ctx(method: &str, deadline: Duration) -> (CallCtx, watch::Sender<bool>) {
        let (cancel_tx, cancel) = watch::channel(false);
        let sink = ChunkSink::new(
            Arc::new(NullPort),
            "home".into(),
            CallId([7; 16]),
            Arc::new(Semaphore::new(64)),
            cancel.clone(),
        );
        let ctx = CallCtx {
            from: "home".into(),
            caller_key: None,
            method: method.into(),
            sink,
            cancel,
            deadline: Some(deadline),
        };
        (ctx, cancel_tx)
    }

    /// What the caller of `cluster_handoff` sends: its `handoffTimeout` as the mesh deadline
    /// (plus the slack), `max_ms` as the remaining hard cap.
    async fn serve_handoff_req(
        h: &AgentHost,
        handoff_timeout: Duration,
        max_ms: u64,
    ) -> (Value, Duration) {
        let req = json!({
            "agent": "coder", "task": "t", "handoffId": "0123456789abcdef0123456789abcdef",
            "maxMs": max_ms,
        });
        let (ctx, _cancel) = call_ctx(METHOD_HANDOFF, handoff_timeout + MESH_DEADLINE_SLACK);
        let t0 = tokio::time::Instant::now();
        let out = HandoffService(h.clone())
            .call(ctx, req.to_string().into_bytes())
            .await
            .expect("an end payload");
        (serde_json::from_slice(&out).expect("json"), t0.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_after_12_s_serves_a_handoff_whose_timeout_is_60_s() {
        let h = agent_host(slow_host(Duration::from_secs(12)).await);
        let (v, took) = serve_handoff_req(&h, Duration::from_secs(60), 3_600_000).await;
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["text"], "done");
        assert!(took >= Duration::from_secs(12), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_later_than_the_handoffs_timeout_fails_it_naming_agents_list_and_that_timeout(
    ) {
        let h = agent_host(slow_host(Duration::from_secs(12)).await);
        let (v, took) = serve_handoff_req(&h, Duration::from_secs(10), 3_600_000).await;
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["code"], "CLAWMATRIX_TIMEOUT", "{v}");
        let msg = v["message"].as_str().unwrap_or("");
        assert!(
            msg.starts_with("host agents.list: no answer from OpenClaw within 9.0 s"),
            "{msg}"
        );
        assert!(
            msg.contains("the handoff's handoffTimeout (10.0 s, sent by home) less 1.0 s"),
            "{msg}"
        );
        // Answered before the caller's own timer (10 s) fires.
        assert_eq!(took, Duration::from_secs(9));
    }

    #[tokio::test(start_paused = true)]
    async fn a_handoff_nearer_its_hard_cap_than_its_timeout_is_bounded_by_the_cap() {
        let h = agent_host(slow_host(Duration::from_secs(12)).await);
        let (v, took) = serve_handoff_req(&h, Duration::from_secs(60), 8_000).await;
        assert_eq!(v["code"], "CLAWMATRIX_TIMEOUT", "{v}");
        let msg = v["message"].as_str().unwrap_or("");
        assert!(msg.contains("within 7.2 s"), "{msg}");
        assert!(msg.contains("handoffMaxMs (8.0 s left)"), "{msg}");
        assert_eq!(took, Duration::from_millis(7_200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_cancels_while_openclaw_checks_the_agent_ends_the_served_handoff() {
        let h = agent_host(slow_host(Duration::from_secs(12)).await);
        let req = json!({"agent": "coder", "task": "t",
            "handoffId": "0123456789abcdef0123456789abcdef", "maxMs": 60_000});
        let (ctx, cancel) = call_ctx(METHOD_HANDOFF, Duration::from_secs(65));
        let t0 = tokio::time::Instant::now();
        let serving = HandoffService(h.clone()).call(ctx, req.to_string().into_bytes());
        let canceller = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = cancel.send(true);
        };
        let (out, ()) = tokio::join!(serving, canceller);
        let v: Value = serde_json::from_slice(&out.expect("end")).expect("json");
        assert_eq!(v["code"], "CLAWMATRIX_CANCELLED", "{v}");
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        assert_eq!(h.host.pending(), 0, "the agents.list request was withdrawn");
    }

    async fn serve_send_req(h: &AgentHost, deadline: Duration) -> (Value, Duration) {
        let (ctx, _cancel) = call_ctx(METHOD_SEND, deadline);
        let t0 = tokio::time::Instant::now();
        let out = SendService(h.clone())
            .call(
                ctx,
                json!({"agent": "coder", "message": "hi"})
                    .to_string()
                    .into_bytes(),
            )
            .await
            .expect("an answer");
        (serde_json::from_slice(&out).expect("json"), t0.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_waits_for_a_late_answer_within_its_deadline_and_fails_clearly_beyond() {
        let h = agent_host(slow_host(Duration::from_secs(12)).await);
        let (v, _) = serve_send_req(&h, SEND_TIMEOUT).await;
        assert_eq!(v["delivered"], true, "{v}");

        let (v, took) = serve_send_req(&h, Duration::from_secs(10)).await;
        assert_eq!(v["code"], "CLAWMATRIX_TIMEOUT", "{v}");
        let msg = v["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("host agents.list: no answer from OpenClaw within 9.0 s"),
            "{msg}"
        );
        assert!(
            msg.contains("cluster_send's deadline (10.0 s, sent by home)"),
            "{msg}"
        );
        assert_eq!(took, Duration::from_secs(9));

        // A caller's deadline beyond the message's bound here is cut to it.
        let h = agent_host(slow_host(Duration::from_secs(40)).await);
        let (v, took) = serve_send_req(&h, Duration::from_secs(120)).await;
        let msg = v["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("cluster_send's bound on this node (30.0 s)"),
            "{msg}"
        );
        assert_eq!(took, Duration::from_secs(29));
    }
}
