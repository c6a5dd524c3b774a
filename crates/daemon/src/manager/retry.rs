//! Boot-aware retries of autostart and ensure rules. A parent often registers before its vendor
//! side is ready (NVIDIA's vGPU manager still starting: no types yet, or `create` answering
//! EAGAIN, EBUSY or ENODEV); mdevctl then fails once and gives up. vgpud instead retries that
//! parent's autostart definitions and ensure rules with bounded, jittered exponential backoff,
//! shows each pending retry with its last error in Problems, and stops when the parent goes.

use std::collections::BTreeMap;
use std::time::Duration;

use super::state::Manager;
use super::{Change, Completion};
use vgpud_model::error::Error;
use vgpud_model::ParentName;

/// First delay; doubled per attempt up to `MAX_DELAY`, each with ±25 % jitter.
pub(super) const FIRST_DELAY: Duration = Duration::from_millis(500);
pub(super) const MAX_DELAY: Duration = Duration::from_secs(60);
/// Attempts after the first failure before giving up (about 8 minutes in all).
pub(super) const MAX_ATTEMPTS: u32 = 12;

/// A parent whose autostart or ensure rules failed in a way that may pass.
#[derive(Debug, Clone)]
pub(super) struct Retry {
    /// Retries done so far.
    pub attempt: u32,
    /// What failed last, for Problems.
    pub last_error: String,
    /// A retry is scheduled (its generation; a stale timer is ignored).
    pub scheduled: Option<u64>,
    pub gave_up: bool,
}

/// Whether a failed autostart or ensure create may pass later: the vendor side not ready yet.
pub(super) fn retryable(e: &Error) -> bool {
    match e {
        Error::DriverRefused { errno, .. } => {
            matches!(
                *errno,
                libc::EAGAIN | libc::EBUSY | vgpud_model::error::EPROBE_DEFER
            )
        }
        Error::ParentGoingAway(_) | Error::UnknownType { .. } | Error::NoSuchType(_) => true,
        Error::Missing(_) | Error::TimedOut { .. } => true,
        _ => false,
    }
}

/// The delay before retry `attempt` (1-based), with jitter from `noise` (any u64).
pub(super) fn backoff(attempt: u32, noise: u64) -> Duration {
    let base = FIRST_DELAY
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_DELAY);
    // ±25 %: noise picks a point in [0.75, 1.25] of the base.
    let permille = 750 + (noise % 501);
    base * permille as u32 / 1000
}

impl Manager {
    /// A failure of autostart or an ensure rule on `parent`: schedule a retry if it may pass.
    pub(super) fn retry_failed(
        &mut self,
        parent: ParentName,
        what: String,
        error: String,
        may_pass: bool,
    ) {
        if !may_pass || !self.parents.contains_key(&parent) {
            return;
        }
        let entry = self.retries.entry(parent.clone()).or_insert(Retry {
            attempt: 0,
            last_error: String::new(),
            scheduled: None,
            gave_up: false,
        });
        entry.last_error = format!("{what}: {error}");
        if entry.scheduled.is_none() && !entry.gave_up {
            if entry.attempt >= MAX_ATTEMPTS {
                entry.gave_up = true;
                tracing::error!(
                    "{parent}: gave up retrying after {MAX_ATTEMPTS} attempts: {}",
                    entry.last_error
                );
            } else {
                entry.attempt += 1;
                self.next_retry += 1;
                let generation = self.next_retry;
                entry.scheduled = Some(generation);
                let delay = backoff(entry.attempt, uuid::Uuid::new_v4().as_u128() as u64);
                tracing::info!(%parent, attempt = entry.attempt, ?delay, "vendor side not ready; retrying");
                let me = self.me.clone();
                let name = parent.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = me.send(Completion::RetryDue(name, generation));
                });
            }
        }
        self.publish(Change::Problems(self.all_problems()));
    }

    /// A scheduled retry is due: converge the parent again (as if it had just registered).
    pub(super) fn retry_due(&mut self, parent: ParentName, generation: u64) {
        let Some(entry) = self.retries.get_mut(&parent) else {
            return;
        };
        if entry.scheduled != Some(generation) {
            return;
        }
        entry.scheduled = None;
        if !self.parents.contains_key(&parent) {
            self.retries.remove(&parent);
            self.publish(Change::Problems(self.all_problems()));
            return;
        }
        self.appeared.push(parent);
        self.converge_appeared();
    }

    /// Something on `parent` that was retried succeeded: forget its failures.
    pub(super) fn retry_succeeded(&mut self, parent: &ParentName) {
        if self
            .retries
            .get(parent)
            .is_some_and(|r| r.scheduled.is_none())
        {
            self.retries.remove(parent);
            self.publish(Change::Problems(self.all_problems()));
        }
    }

    /// The parent went away: its retries stop.
    pub(super) fn retries_forget(&mut self, parent: &ParentName) {
        if self.retries.remove(parent).is_some() {
            self.publish(Change::Problems(self.all_problems()));
        }
    }

    /// One line per parent being retried, for Problems.
    pub(super) fn retry_problems(&self) -> Vec<String> {
        self.retries
            .iter()
            .map(|(parent, r)| {
                if r.gave_up {
                    format!("{parent}: gave up after {} retries; last error: {}", r.attempt, r.last_error)
                } else {
                    format!("{parent}: vendor side not ready, retry {} of {MAX_ATTEMPTS} pending; last error: {}", r.attempt, r.last_error)
                }
            })
            .collect()
    }
}

/// Retries by parent, kept in the manager.
pub(super) type Retries = BTreeMap<ParentName, Retry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_bounded() {
        for noise in [0, 250, 500, 12345] {
            let d1 = backoff(1, noise);
            assert!(
                d1 >= Duration::from_millis(375) && d1 <= Duration::from_millis(625),
                "{d1:?}"
            );
            let d3 = backoff(3, noise);
            assert!(
                d3 >= Duration::from_millis(1500) && d3 <= Duration::from_millis(2500),
                "{d3:?}"
            );
            let d30 = backoff(30, noise);
            assert!(
                d30 <= MAX_DELAY * 5 / 4 && d30 >= MAX_DELAY * 3 / 4,
                "{d30:?}"
            );
        }
        assert_ne!(
            backoff(2, 0),
            backoff(2, 500),
            "jitter spreads retries of many parents"
        );
    }

    #[test]
    fn only_a_vendor_side_not_ready_is_retried() {
        let refused = |errno| Error::DriverRefused { errno, hint: None };
        assert!(retryable(&refused(libc::EAGAIN)));
        assert!(retryable(&refused(libc::EBUSY)));
        assert!(retryable(&Error::ParentGoingAway("p".into())));
        assert!(!retryable(&refused(libc::EIO)));
        assert!(!retryable(&Error::AlreadyExists("u".into())));
        assert!(!retryable(&Error::NoCapacity {
            parent: "p".into(),
            type_id: "t".into(),
            errno: libc::ENOSPC
        }));
    }
}
