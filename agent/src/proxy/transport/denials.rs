//! The egress lockdown's refusals, as the kernel reports them on its ring buffer: each becomes a
//! `denial` event attributed like a connection (process, workload, enrollment), counted on its
//! enrollment. At most [`EVENTS_PER_SECOND`] are written each second; the rest are counted only
//! (by the kernel's `lockdown_denied` counter and the enrollment's), so a workload that hammers a
//! closed port cannot fill the audit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::{debug, warn};

use crate::audit::{CloseReason, Decision, Event, EventKind};
use crate::proxy::Inputs;
use crate::redirect::{Denial, Denials, PROTO_UDP};

/// The most `denial` events written per second.
pub const EVENTS_PER_SECOND: u32 = 20;

/// Reads the refusals until `stop`, recording each.
pub async fn record(mut ring: Denials, inputs: Arc<Inputs>, mut stop: watch::Receiver<bool>) {
    let mut window = (Instant::now(), 0u32);
    loop {
        let taken = tokio::select! {
            r = ring.next() => match r {
                Ok(t) => t,
                Err(e) => {
                    warn!(error = %e, "lockdown ring buffer failed; its refusals are counted only");
                    return;
                }
            },
            _ = crate::drain::signalled(&mut stop) => return,
        };
        for d in taken {
            if window.0.elapsed() >= Duration::from_secs(1) {
                window = (Instant::now(), 0);
            }
            let (event, attributed) = event_of(&inputs, &d);
            if let Some(a) = attributed {
                a.fetch_add(1, Ordering::Relaxed);
            }
            if window.1 >= EVENTS_PER_SECOND {
                debug!(
                    cgroup_id = d.cgroup_id,
                    "lockdown refusal counted, not recorded (rate)"
                );
                continue;
            }
            window.1 += 1;
            if let Err(e) = inputs.sink.submit(event).await {
                warn!(error = %e, "lockdown refusal not recorded");
            }
        }
    }
}

/// The `denial` event of one refusal, and the counter of the enrollment it is attributed to.
fn event_of(inputs: &Inputs, d: &Denial) -> (Event, Option<Arc<std::sync::atomic::AtomicU64>>) {
    let mut e = Event::new(EventKind::Denial, SystemTime::now(), &inputs.host);
    let dst: SocketAddr = crate::redirect::socket_addr(&d.dst);
    let protocol = if d.protocol == PROTO_UDP {
        "udp"
    } else {
        "tcp"
    };
    e.pid = Some(d.pid);
    e.tgid = Some(d.tgid);
    e.uid = Some(d.uid);
    e.comm = Some(crate::redirect::comm_of(&d.comm));
    e.cgroup_id = Some(d.cgroup_id);
    e.dst_ip = Some(dst.ip());
    e.dst_port = Some(dst.port());
    e.decision = Some(Decision::Deny);
    e.success = Some(false);
    e.close_reason = Some(CloseReason::DeniedLockdown);
    e.detail = Some(protocol.to_owned());
    e.error_message = Some(format!(
        "{protocol} to {dst} refused by the egress lockdown: not an allowed destination"
    ));
    let attribution =
        inputs
            .identity
            .fill_event(&mut e, d.tgid, d.uid, d.cgroup_id, &inputs.registry);
    (e, attribution.map(|a| a.denials))
}
