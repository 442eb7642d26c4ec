//! NAK error numbers and system command numbers.

/// A NAK error number (u16 right after the header of a NAK).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NakCode {
    /// 1: the session is not open at the receiver.
    UnknownSession,
    /// 2: the CRC byte did not match.
    CrcMismatch,
    /// 3: the receiver does not speak that protocol version.
    UnsupportedVersion,
    /// 4: too short, bad buffer header, over 512 bytes, or otherwise unparseable.
    Malformed,
    /// 5: the message is larger than the receiver accepts, or it holds too many partial ones.
    TooLarge,
    /// 6: the command is not known at the destination.
    UnknownCommand,
    /// 7: no portion at the destination queue.
    UnknownQueue,
    /// 8: overloaded; the payload may list alternates.
    Overloaded,
    /// 9: authentication failed.
    AuthenticationFailed,
    /// 10 (dabs): every session number for this peer is in use.
    SessionsExhausted,
    /// 11 (dabs): the farm runs no application of that name.
    UnknownApplication,
    /// 12 (dabs): the server is draining or over its connection threshold.
    NotAccepting,
    /// 13 (dabs): the server does not accept the client's security offer (it refuses
    /// encryption, or implements none of the offered specifications).
    EncryptionRefused,
    /// Any other number: 14..255 reserved for dabs, 256.. for applications.
    Other(u16),
}

impl NakCode {
    /// The number on the wire.
    pub fn number(self) -> u16 {
        match self {
            NakCode::UnknownSession => 1,
            NakCode::CrcMismatch => 2,
            NakCode::UnsupportedVersion => 3,
            NakCode::Malformed => 4,
            NakCode::TooLarge => 5,
            NakCode::UnknownCommand => 6,
            NakCode::UnknownQueue => 7,
            NakCode::Overloaded => 8,
            NakCode::AuthenticationFailed => 9,
            NakCode::SessionsExhausted => 10,
            NakCode::UnknownApplication => 11,
            NakCode::NotAccepting => 12,
            NakCode::EncryptionRefused => 13,
            NakCode::Other(n) => n,
        }
    }

    /// The code for a number on the wire.
    pub fn from_number(n: u16) -> Self {
        match n {
            1 => NakCode::UnknownSession,
            2 => NakCode::CrcMismatch,
            3 => NakCode::UnsupportedVersion,
            4 => NakCode::Malformed,
            5 => NakCode::TooLarge,
            6 => NakCode::UnknownCommand,
            7 => NakCode::UnknownQueue,
            8 => NakCode::Overloaded,
            9 => NakCode::AuthenticationFailed,
            10 => NakCode::SessionsExhausted,
            11 => NakCode::UnknownApplication,
            12 => NakCode::NotAccepting,
            13 => NakCode::EncryptionRefused,
            n => NakCode::Other(n),
        }
    }

    /// A short description for logs and error messages.
    pub fn describe(self) -> &'static str {
        match self {
            NakCode::UnknownSession => "unknown session",
            NakCode::CrcMismatch => "CRC mismatch",
            NakCode::UnsupportedVersion => "unsupported version",
            NakCode::Malformed => "malformed datagram",
            NakCode::TooLarge => "message too large to accept",
            NakCode::UnknownCommand => "unknown command",
            NakCode::UnknownQueue => "unknown destination queue",
            NakCode::Overloaded => "overloaded, try another server",
            NakCode::AuthenticationFailed => "authentication failed",
            NakCode::SessionsExhausted => "no free session number for this peer",
            NakCode::UnknownApplication => "unknown application",
            NakCode::NotAccepting => "server is not accepting new clients",
            NakCode::EncryptionRefused => "security offer not accepted",
            NakCode::Other(n) if n >= 256 => "application-defined error",
            NakCode::Other(_) => "unassigned error number",
        }
    }
}

impl std::fmt::Display for NakCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.number(), self.describe())
    }
}

/// The payload of a NAK: an error number and optional UTF-8 text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NakPayload<'a> {
    /// The error number.
    pub code: NakCode,
    /// Optional explanation.
    pub text: &'a str,
}

/// A NAK payload that cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NakPayloadError {
    /// Fewer than the two bytes of the error number.
    #[error("NAK payload is {0} bytes, too short for its 2-byte error number")]
    TooShort(usize),
    /// The text is not UTF-8.
    #[error("NAK text is not valid UTF-8")]
    NotUtf8,
}

impl<'a> NakPayload<'a> {
    /// Reads a NAK payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, NakPayloadError> {
        let [a, b, rest @ ..] = payload else {
            return Err(NakPayloadError::TooShort(payload.len()));
        };
        let text = std::str::from_utf8(rest).map_err(|_| NakPayloadError::NotUtf8)?;
        Ok(Self { code: NakCode::from_number(u16::from_be_bytes([*a, *b])), text })
    }

    /// Appends the payload bytes to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.code.number().to_be_bytes());
        out.extend_from_slice(self.text.as_bytes());
    }
}

/// System commands 1..255. Numbers 1..9 are fixed by the spec; 16.. are dabs's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum SystemCommand {
    /// 1: open a session (sent with session 0).
    OpenSession = 1,
    /// 2: close a session.
    CloseSession = 2,
    /// 3: shut down, clean or emergency.
    Shutdown = 3,
    /// 4: ask for statistics.
    GetStatistics = 4,
    /// 5: a client portion has started.
    Started = 5,
    /// 6: a portion's state changed.
    StateChange = 6,
    /// 7: add a client to a portion.
    AddClient = 7,
    /// 8: server tells a client to move to an alternate.
    Failover = 8,
    /// 9: reply with the request's payload.
    Echo = 9,
    /// 16 (dabs): a node announces itself and its statistics to the farm group.
    Announce = 16,
    /// 17 (dabs): resolve a virtual address to a network address.
    ResolveVa = 17,
    /// 18 (dabs): the farm's decider hands a client's `OPEN_SESSION` to the chosen node.
    Assign = 18,
    /// 19 (dabs): ask a node for the farm's run-time settings it holds.
    Settings = 19,
    /// 20 (dabs): ask a node to start another portion of an application (starvation elsewhere).
    Spawn = 20,
    /// 21 (dabs): the operator drains a node (or undoes it), authenticated with the farm secret.
    Drain = 21,
    /// 23 (dabs): a client raises an alert with its server portion (e.g. a FAILOVER it could
    /// not verify), so the farm counts and shows it.
    Alert = 23,
    /// 24 (dabs): a node asks another to measure its round trip to an address (the `closest`
    /// policy's nearness), authenticated with the farm secret.
    Measure = 24,
    /// 25 (dabs): the job-execution service between nodes (placing, running, committing and
    /// replicating jobs), authenticated with the farm secret.
    Jobs = 25,
    /// 26 (dabs): a node tells an MP client that a job it submitted is done (its `notify`
    /// address was `mp://HOST:PORT/QUEUE`).
    JobDone = 26,
}

impl SystemCommand {
    /// All commands this implementation knows, in number order.
    pub const ALL: [SystemCommand; 19] = [
        SystemCommand::OpenSession,
        SystemCommand::CloseSession,
        SystemCommand::Shutdown,
        SystemCommand::GetStatistics,
        SystemCommand::Started,
        SystemCommand::StateChange,
        SystemCommand::AddClient,
        SystemCommand::Failover,
        SystemCommand::Echo,
        SystemCommand::Announce,
        SystemCommand::ResolveVa,
        SystemCommand::Assign,
        SystemCommand::Settings,
        SystemCommand::Spawn,
        SystemCommand::Drain,
        SystemCommand::Alert,
        SystemCommand::Measure,
        SystemCommand::Jobs,
        SystemCommand::JobDone,
    ];

    /// The number on the wire.
    pub fn number(self) -> u16 {
        self as u16
    }

    /// The system command with that number, if it is one.
    pub fn from_number(n: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.number() == n)
    }

    /// The command's name as the spec spells it.
    pub fn name(self) -> &'static str {
        match self {
            SystemCommand::OpenSession => "OPEN_SESSION",
            SystemCommand::CloseSession => "CLOSE_SESSION",
            SystemCommand::Shutdown => "SHUTDOWN",
            SystemCommand::GetStatistics => "GET_STATISTICS",
            SystemCommand::Started => "STARTED",
            SystemCommand::StateChange => "STATE_CHANGE",
            SystemCommand::AddClient => "ADD_CLIENT",
            SystemCommand::Failover => "FAILOVER",
            SystemCommand::Echo => "ECHO",
            SystemCommand::Announce => "ANNOUNCE",
            SystemCommand::ResolveVa => "RESOLVE_VA",
            SystemCommand::Assign => "ASSIGN",
            SystemCommand::Settings => "SETTINGS",
            SystemCommand::Spawn => "SPAWN",
            SystemCommand::Drain => "DRAIN",
            SystemCommand::Alert => "ALERT",
            SystemCommand::Measure => "MEASURE",
            SystemCommand::Jobs => "JOBS",
            SystemCommand::JobDone => "JOB_DONE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nak_numbers_round_trip() {
        for n in 0..300u16 {
            assert_eq!(NakCode::from_number(n).number(), n);
        }
    }

    #[test]
    fn fixed_system_numbers() {
        assert_eq!(SystemCommand::OpenSession.number(), 1);
        assert_eq!(SystemCommand::Failover.number(), 8);
        assert_eq!(SystemCommand::Echo.number(), 9);
        for c in SystemCommand::ALL {
            assert_eq!(SystemCommand::from_number(c.number()), Some(c));
        }
        assert_eq!(SystemCommand::from_number(256), None);
    }

    #[test]
    fn nak_payload() {
        let mut v = Vec::new();
        NakPayload { code: NakCode::UnknownApplication, text: "no app \"x\"" }.write_to(&mut v);
        let p = NakPayload::parse(&v).unwrap();
        assert_eq!(p.code, NakCode::UnknownApplication);
        assert_eq!(p.text, "no app \"x\"");
        assert_eq!(NakPayload::parse(&[1]), Err(NakPayloadError::TooShort(1)));
        assert_eq!(NakPayload::parse(&[0, 1, 0xff]), Err(NakPayloadError::NotUtf8));
    }
}
