//! The gate: one access attempt from frame to answer, for any transport.
//!
//! `attempt` decides (one write transaction), runs the endpoint's action on a grant, records
//! the final decision and its event, feeds the clock-trust tracker, and returns the result
//! frame for the transport to deliver.

use std::sync::atomic::Ordering;

use latchkey_proto::{ResultFrame, Status};

use super::action::{Actions, Grantee};
use super::challenge::Taken;
use super::verify::{self, Attempt};
use crate::clock::UnixTime;
use crate::state::AppState;

/// What a transport needs back from an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    /// The result frame to notify.
    pub frame: [u8; ResultFrame::LEN],
}

pub struct Gate {
    state: AppState,
    actions: Actions,
}

impl Gate {
    pub fn new(state: AppState) -> Self {
        if state.config.endpoints.is_empty() {
            tracing::info!(
                "no [[endpoint]] is configured: only registered door nodes can be opened"
            );
        }
        Self {
            actions: Actions::with_nodes(state.nodes.clone()),
            state,
        }
    }

    /// The endpoint actions (shared with the v2 door, so pulses of one GPIO line never overlap).
    pub fn actions(&self) -> &Actions {
        &self.actions
    }

    /// Decides one auth write and answers it.
    pub async fn attempt(
        &self,
        frame: Vec<u8>,
        peer: String,
        nonce: Taken,
        now: UnixTime,
    ) -> Outcome {
        let state = self.state.clone();
        let peer_owned = peer.clone();
        // A result carries the frame's nonce whenever the frame decodes (PROTOCOL.md §5.3).
        let answered_nonce = latchkey_proto::AuthFrame::decode(&frame)
            .map(|f| f.nonce)
            .ok()
            .or(nonce.last)
            .unwrap_or([0; 16]);
        let decided = self
            .state
            .store
            .write(move |tx| {
                // Config endpoints and registered door nodes, as of this transaction.
                let endpoints = crate::nodes::doors::endpoints(tx, &state.config.endpoints)?;
                verify::decide(
                    tx,
                    &state.master,
                    &endpoints,
                    &Attempt {
                        frame: &frame,
                        peer: &peer_owned,
                        nonce,
                        now,
                    },
                )
            })
            .await;
        let verdict = match decided {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(peer = %peer, error = %e, "BLE access attempt could not be decided");
                self.state
                    .metrics
                    .access_denied
                    .fetch_add(1, Ordering::Relaxed);
                return Outcome {
                    status: Status::ActionFailed,
                    frame: verify::unsigned(Status::ActionFailed, answered_nonce),
                };
            }
        };

        if let Some(phone_time) = verdict.phone_time {
            self.state.clock_trust.record_phone_time(phone_time, now);
        }

        let mut status = verdict.status;
        if status == Status::Granted {
            let detail;
            (status, detail) = self.act(&verdict).await;
            let peer_owned = peer.clone();
            // The verdict holds keys; the store's thread gets only what it records.
            let mut summary = verdict.summary();
            summary.detail = detail;
            let recorded = self
                .state
                .store
                .write(move |tx| verify::record_outcome(tx, &summary, status, &peer_owned, now))
                .await;
            if let Err(e) = recorded {
                tracing::error!(error = %e, "BLE access decision could not be recorded");
            }
        }

        let counter = if status == Status::Granted {
            &self.state.metrics.access_granted
        } else {
            &self.state.metrics.access_denied
        };
        counter.fetch_add(1, Ordering::Relaxed);
        log_decision(&verdict, status, &peer);
        Outcome {
            status,
            frame: verdict.result_frame(status),
        }
    }

    /// Runs the granted endpoint's action; a failure comes with its reason for the event.
    async fn act(&self, v: &verify::Verdict) -> (Status, Option<String>) {
        let (Some(ep), Some(id)) = (&v.endpoint, &v.device_id) else {
            return (Status::ActionFailed, None);
        };
        let who = Grantee {
            device_id: id.clone(),
            device_name: v.device_name.clone().unwrap_or_default(),
        };
        match self.actions.run(ep, &who).await {
            Ok(()) => (Status::Granted, None),
            Err(e) => {
                tracing::warn!(endpoint = %ep.id, device = %id, error = %e, "endpoint action failed");
                (Status::ActionFailed, Some(e.to_string()))
            }
        }
    }
}

fn log_decision(v: &verify::Verdict, status: Status, peer: &str) {
    let s = v.summary();
    let device = s.device_id.map(|d| d.to_string()).unwrap_or_default();
    let endpoint = s.endpoint.unwrap_or_default();
    if status == Status::Granted {
        tracing::info!(%device, %endpoint, %peer, "BLE access granted");
    } else if let Some(e) = &v.decode_error {
        tracing::info!(reason = %status, %peer, defect = %e, "BLE access denied");
    } else {
        tracing::info!(reason = %status, %device, %endpoint, %peer, "BLE access denied");
    }
}
