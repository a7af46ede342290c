//! The deadlines of one connection: keepalive, the send timeout (our bytes
//! not taken by the socket) and the frame timeout (a packet started but not
//! finished). One `sleep_until` in the run loop waits for the earliest.

use std::time::Duration;

use tokio::time::Instant;

use super::ConnError;
use crate::config::MqttConfig;
use crate::metrics::ProtocolErrorReason as Why;

/// Far enough to mean "never" without overflowing `Instant` arithmetic.
const FAR: Duration = Duration::from_secs(86400 * 365);

pub struct Timers {
    /// 1.5 x the keepalive (MQTT-3.1.2-24); `None` for keepalive 0.
    grace: Option<Duration>,
    send_timeout: Duration,
    frame_timeout: Duration,
    /// The client must have sent something by then.
    keepalive: Instant,
    /// Our buffered bytes must have moved by then.
    send: Option<Instant>,
    /// The partly received packet must be complete by then.
    frame: Option<Instant>,
}

impl Timers {
    pub fn new(cfg: &MqttConfig, keep_alive: u16) -> Timers {
        let grace = (keep_alive > 0).then(|| Duration::from_millis(keep_alive as u64 * 1500));
        Timers {
            grace,
            send_timeout: cfg.send_timeout(),
            frame_timeout: cfg.frame_timeout(),
            keepalive: Instant::now() + grace.unwrap_or(FAR),
            send: None,
            frame: None,
        }
    }

    /// The earliest deadline, `also` included.
    pub fn next(&self, also: Option<Instant>) -> Instant {
        [Some(self.keepalive), self.send, self.frame, also]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.keepalive)
    }

    /// Bytes arrived from the client.
    pub fn heard(&mut self) {
        self.keepalive = Instant::now() + self.grace.unwrap_or(FAR);
    }

    /// After decoding: a packet tail left in the buffer has the frame timeout
    /// to complete, counted from when it started (a completed packet starts
    /// the clock again for the next one).
    pub fn after_read(&mut self, buffer_empty: bool, consumed: bool) {
        if buffer_empty {
            self.frame = None;
        } else if consumed || self.frame.is_none() {
            self.frame = Some(Instant::now() + self.frame_timeout);
        }
    }

    /// We are not reading: nothing the client sends can be seen.
    pub fn reading_paused(&mut self) {
        self.heard();
        self.frame = None;
    }

    /// A write attempt: `progress` when the socket took bytes, `drained`
    /// when nothing is left. The send timeout runs while bytes wait and
    /// starts again whenever the socket takes some.
    pub fn wrote(&mut self, progress: bool, drained: bool) {
        if drained {
            self.send = None;
        } else if progress || self.send.is_none() {
            self.send = Some(Instant::now() + self.send_timeout);
        }
    }

    /// The error for a deadline that has passed, if any.
    pub fn check(&self, keep_alive: u16) -> Result<(), ConnError> {
        let now = Instant::now();
        if self.send.is_some_and(|at| at <= now) {
            return Err(ConnError::protocol(
                Why::SendTimeout,
                format!(
                    "socket took none of our bytes for {} s",
                    self.send_timeout.as_secs()
                ),
            ));
        }
        if self.frame.is_some_and(|at| at <= now) {
            return Err(ConnError::protocol(
                Why::FrameTimeout,
                format!(
                    "packet not completed within {} s",
                    self.frame_timeout.as_secs()
                ),
            ));
        }
        if self.keepalive <= now {
            return Err(ConnError::protocol(
                Why::KeepaliveTimeout,
                format!("no packet within 1.5 x {keep_alive} s"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn timers() -> Timers {
        let cfg = MqttConfig {
            send_timeout_secs: 2,
            frame_timeout_secs: 3,
            ..Default::default()
        };
        Timers::new(&cfg, 10)
    }

    fn why(t: &Timers) -> Option<Why> {
        match t.check(10) {
            Err(ConnError::Protocol { why, .. }) => Some(why),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn send_timeout_runs_while_bytes_wait_and_restarts_on_progress() {
        let mut t = timers();
        t.wrote(false, false);
        advance(Duration::from_millis(1500)).await;
        t.wrote(false, false); // no progress: the clock keeps running
        advance(Duration::from_millis(600)).await;
        assert_eq!(why(&t), Some(Why::SendTimeout));
        let mut t = timers();
        t.wrote(false, false);
        advance(Duration::from_millis(1500)).await;
        t.wrote(true, false); // progress: a new 2 s
        advance(Duration::from_millis(1500)).await;
        assert_eq!(why(&t), None);
        t.wrote(true, true); // drained: no send deadline
        advance(Duration::from_secs(5)).await;
        assert_eq!(why(&t), None);
    }

    #[tokio::test(start_paused = true)]
    async fn frame_timeout_counts_from_the_start_of_the_packet() {
        let mut t = timers();
        t.after_read(false, false); // a packet started
        advance(Duration::from_secs(2)).await;
        t.heard();
        t.after_read(false, false); // more of it, not complete
        advance(Duration::from_millis(1100)).await;
        assert_eq!(why(&t), Some(Why::FrameTimeout));
        // A completed packet starts the clock again for the next one.
        let mut t = timers();
        t.after_read(false, false);
        advance(Duration::from_secs(2)).await;
        t.after_read(false, true);
        advance(Duration::from_secs(2)).await;
        assert_eq!(why(&t), None);
        t.after_read(true, true);
        advance(Duration::from_secs(5)).await;
        assert_eq!(why(&t), None);
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_is_one_and_a_half_intervals() {
        let mut t = timers();
        advance(Duration::from_millis(14_900)).await;
        assert_eq!(why(&t), None);
        t.heard();
        advance(Duration::from_millis(14_900)).await;
        assert_eq!(why(&t), None);
        advance(Duration::from_millis(200)).await;
        assert_eq!(why(&t), Some(Why::KeepaliveTimeout));
        assert!(t.next(None) <= Instant::now());
    }
}
