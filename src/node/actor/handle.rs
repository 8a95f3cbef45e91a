//! The actor's inputs ([`Input`]) and the handle link tasks, the listener and the dialers
//! send them through ([`ActorHandle`]); the handle is also the features' [`Port`].

use super::*;

/// Everything the actor needs to drive one authenticated link.
pub(crate) struct LinkRegistration {
    pub link: LinkId,
    pub peer: NodeId,
    /// The node key the peer proved in the handshake.
    pub key: PublicKey,
    pub direction: Direction,
    pub addr: String,
    /// The link's writer queue; it also carries the close request and the "proved" flag.
    pub queue: QueueSender,
}

/// Inputs of the actor.
pub(crate) enum Input {
    /// May `node` open a link now (`Mesh::admit`)?
    Admit {
        node: NodeId,
        key: PublicKey,
        reply: oneshot::Sender<std::result::Result<(), RejectCode>>,
    },
    /// Is a live link to `node` up (dialers skip peers connected inbound)?
    Connected {
        node: NodeId,
        reply: oneshot::Sender<bool>,
    },
    /// A handshake failed with `code` (already logged by the link task).
    HandshakeRejected { code: RejectCode },
    /// A handshake refused `node`'s proved `key` (`key_changed`, `revoked`).
    KeyRefused { node: NodeId, key: PublicKey },
    /// An operator's trust reset: forget the key trusted for `node` (`true`: one was).
    ResetTrust {
        node: NodeId,
        reply: oneshot::Sender<bool>,
    },
    /// An authenticated link is ready to pump.
    LinkUp(Box<LinkRegistration>),
    /// One BINARY message from a link.
    Data { link: LinkId, bytes: Vec<u8> },
    /// A TEXT message after the handshake: counted as a decode error and dropped.
    TextAfterHandshake,
    /// The link task ended (peer closed, I/O error, or after our close).
    LinkDown { link: LinkId, reason: String },
    /// A command from a feature: a call, a stream, credit, a served call's output, a route.
    Call(Command),
    /// Panic in the actor (tests of the supervision: [`super::Node::debug_panic_actor`]).
    Panic { reason: String },
}

/// Cloneable handle to the actor's input channel.
#[derive(Clone)]
pub(crate) struct ActorHandle {
    pub(crate) tx: mpsc::Sender<Input>,
}

impl ActorHandle {
    /// `Mesh::admit(node)`; a stopped actor refuses with `capacity`.
    pub async fn admit(&self, node: &str, key: &PublicKey) -> std::result::Result<(), RejectCode> {
        let (reply, rx) = oneshot::channel();
        let input = Input::Admit {
            node: node.to_string(),
            key: *key,
            reply,
        };
        if self.tx.send(input).await.is_err() {
            return Err(RejectCode::Capacity);
        }
        rx.await.unwrap_or(Err(RejectCode::Capacity))
    }

    /// Whether a live link to `node` exists.
    pub async fn connected(&self, node: &str) -> bool {
        let (reply, rx) = oneshot::channel();
        let input = Input::Connected {
            node: node.to_string(),
            reply,
        };
        if self.tx.send(input).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Forget the key trusted for `node`, in the core and the trust store; `true` if one was
    /// trusted (`false` too when the actor is gone).
    pub async fn reset_trust(&self, node: &str) -> bool {
        let (reply, rx) = oneshot::channel();
        let input = Input::ResetTrust {
            node: node.to_string(),
            reply,
        };
        if self.tx.send(input).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// A handshake refused `node`'s proved `key`.
    pub async fn key_refused(&self, node: &str, key: &PublicKey) {
        let input = Input::KeyRefused {
            node: node.to_string(),
            key: *key,
        };
        let _ = self.tx.send(input).await;
    }

    pub async fn handshake_rejected(&self, code: RejectCode) {
        let _ = self.tx.send(Input::HandshakeRejected { code }).await;
    }

    /// Register a link; `false` when the actor is gone (the node is stopping).
    pub async fn link_up(&self, reg: LinkRegistration) -> bool {
        self.tx.send(Input::LinkUp(Box::new(reg))).await.is_ok()
    }

    /// Forward one binary message without waiting: `Ok(false)` when the actor is gone,
    /// `Err(input)` when its queue is full (the caller then waits with [`ActorHandle::send`]).
    pub fn try_data(&self, link: LinkId, bytes: Vec<u8>) -> std::result::Result<bool, Input> {
        match self.tx.try_send(Input::Data { link, bytes }) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(input)) => Err(input),
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
        }
    }

    /// Queue `input`, waiting while the actor's queue is full; `false` when the actor is gone.
    pub async fn send(&self, input: Input) -> bool {
        self.tx.send(input).await.is_ok()
    }

    pub async fn text_after_handshake(&self) {
        let _ = self.tx.send(Input::TextAfterHandshake).await;
    }

    pub async fn link_down(&self, link: LinkId, reason: String) {
        let _ = self.tx.send(Input::LinkDown { link, reason }).await;
    }

    /// The features' API on this actor, reading `snapshot`.
    pub fn client(&self, snapshot: watch::Receiver<MeshSnapshot>) -> MeshClient {
        MeshClient::new(Arc::new(self.clone()), snapshot)
    }

    /// Make the actor panic with `reason` (tests of the supervision); `false` when its queue
    /// is full or it is gone.
    pub fn panic(&self, reason: &str) -> bool {
        self.tx
            .try_send(Input::Panic {
                reason: reason.to_string(),
            })
            .is_ok()
    }
}

impl Port for ActorHandle {
    fn try_send(
        &self,
        cmd: Command,
    ) -> std::result::Result<(), mpsc::error::TrySendError<Command>> {
        use mpsc::error::TrySendError;
        match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(Input::Call(cmd));
                Ok(())
            }
            Err(TrySendError::Full(())) => Err(TrySendError::Full(cmd)),
            Err(TrySendError::Closed(())) => Err(TrySendError::Closed(cmd)),
        }
    }

    fn send_waiting(&self, cmd: Command) -> WaitingSend<'_> {
        Box::pin(async move { self.tx.send(Input::Call(cmd)).await.is_ok() })
    }
}
