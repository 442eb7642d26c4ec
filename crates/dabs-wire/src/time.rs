//! The 3-byte sent-time stamp and the latency computed from it.

/// Milliseconds in one hour: the stamp only carries minutes, seconds and milliseconds.
pub const HOUR_MS: u32 = 3_600_000;
const HALF_HOUR_MS: u32 = HOUR_MS / 2;

/// A sent-time stamp: minutes, seconds and milliseconds of the sender's UTC wall clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SentTime {
    minutes: u8,
    seconds: u8,
    millis: u16,
}

/// A stamp field outside its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("sent-time {field} is {value}, must be at most {max}")]
pub struct SentTimeError {
    /// `minutes`, `seconds` or `ms`.
    pub field: &'static str,
    /// The offending value.
    pub value: u16,
    /// The largest value allowed.
    pub max: u16,
}

impl SentTime {
    /// Builds a stamp, checking each field's range (minutes and seconds 0..59, ms 0..999).
    pub fn new(minutes: u8, seconds: u8, millis: u16) -> Result<Self, SentTimeError> {
        let check = |field, value: u16, max| {
            if value > max { Err(SentTimeError { field, value, max }) } else { Ok(()) }
        };
        check("minutes", minutes.into(), 59)?;
        check("seconds", seconds.into(), 59)?;
        check("ms", millis, 999)?;
        Ok(Self { minutes, seconds, millis })
    }

    /// The stamp for a clock reading in milliseconds since the Unix epoch (UTC).
    pub fn from_unix_millis(unix_ms: u64) -> Self {
        Self::from_millis_of_hour((unix_ms % u64::from(HOUR_MS)) as u32)
    }

    /// The stamp for a position within the hour, in milliseconds (taken modulo one hour).
    pub fn from_millis_of_hour(ms: u32) -> Self {
        let ms = ms % HOUR_MS;
        Self { minutes: (ms / 60_000) as u8, seconds: (ms / 1000 % 60) as u8, millis: (ms % 1000) as u16 }
    }

    /// Milliseconds since the top of the hour.
    pub fn millis_of_hour(self) -> u32 {
        u32::from(self.minutes) * 60_000 + u32::from(self.seconds) * 1000 + u32::from(self.millis)
    }

    /// Minutes, 0..59.
    pub fn minutes(self) -> u8 {
        self.minutes
    }
    /// Seconds, 0..59.
    pub fn seconds(self) -> u8 {
        self.seconds
    }
    /// Milliseconds, 0..999.
    pub fn millis(self) -> u16 {
        self.millis
    }
}

/// A one-way latency read from a stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    /// The latency in milliseconds (0 when the sender's clock was ahead).
    pub millis: u32,
    /// True when the sender's clock was ahead of ours (the spec's clock-skew case).
    pub clock_skew: bool,
}

/// Latency of a message stamped `sent`, received when our clock reads `now_unix_ms`.
///
/// `(now − sent) mod 1 h`; above half an hour the sender's clock must be ahead, so the
/// result is 0 and flagged as skew for the caller to count.
pub fn latency(sent: SentTime, now_unix_ms: u64) -> Latency {
    let now = (now_unix_ms % u64::from(HOUR_MS)) as u32;
    let diff = (now + HOUR_MS - sent.millis_of_hour()) % HOUR_MS;
    if diff > HALF_HOUR_MS {
        Latency { millis: 0, clock_skew: true }
    } else {
        Latency { millis: diff, clock_skew: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_from_clock_reading() {
        // 2026-01-01T10:17:42.123Z
        let t = SentTime::from_unix_millis(1_767_262_662_123);
        assert_eq!((t.minutes(), t.seconds(), t.millis()), (17, 42, 123));
    }

    #[test]
    fn latency_wraps_the_hour() {
        let sent = SentTime::new(59, 59, 900).unwrap();
        let now = 3 * u64::from(HOUR_MS) + 150; // 00:00.150 of a later hour
        assert_eq!(latency(sent, now), Latency { millis: 250, clock_skew: false });
    }

    #[test]
    fn sender_ahead_is_skew() {
        let sent = SentTime::new(10, 0, 5).unwrap();
        let now = 10 * 60_000; // 5 ms before the stamp
        assert_eq!(latency(sent, now), Latency { millis: 0, clock_skew: true });
    }

    #[test]
    fn exactly_half_an_hour_is_latency() {
        let sent = SentTime::new(0, 0, 0).unwrap();
        assert_eq!(latency(sent, u64::from(HALF_HOUR_MS)).millis, HALF_HOUR_MS);
        assert!(latency(sent, u64::from(HALF_HOUR_MS) + 1).clock_skew);
    }

    #[test]
    fn fields_are_range_checked() {
        assert_eq!(SentTime::new(60, 0, 0).unwrap_err().field, "minutes");
        assert_eq!(SentTime::new(0, 60, 0).unwrap_err().field, "seconds");
        assert_eq!(SentTime::new(0, 0, 1000).unwrap_err().field, "ms");
    }
}
