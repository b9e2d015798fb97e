//! Insert error classes. The class alone decides what the sink does with a batch:
//! - `Retryable`: the server or the network is struggling; resend the same batch after backoff.
//! - `Permanent`: the data is refused (parse error, type mismatch, missing column, constraint);
//!   after a few attempts, isolate the bad rows and dead-letter them.
//! - `Destination`: the database or table is missing, or we may not write to it. Resending will
//!   work once an operator fixes it, and dropping would lose everything: hold and alert.
//!
//! Unknown codes are retryable: holding a batch too long is recoverable, dropping it is not.

use clickhouse::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Retryable,
    Permanent,
    Destination,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Destination => "destination",
        }
    }
}

/// The ClickHouse exception code in an error message (`Code: 60. DB::Exception: ...`), or the
/// bare code the client reports when it only had the `X-ClickHouse-Exception-Code` header.
pub fn exception_code(msg: &str) -> Option<u32> {
    if let Some(i) = msg.find("Code: ") {
        let digits: String = msg[i + 6..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        return digits.parse().ok();
    }
    let t = msg.trim();
    if !t.is_empty() && t.len() <= 5 && t.chars().all(|c| c.is_ascii_digit()) {
        return t.parse().ok();
    }
    None
}

pub fn classify_code(code: u32) -> ErrorClass {
    match code {
        // UNKNOWN_TABLE, UNKNOWN_DATABASE, auth and access errors, READONLY.
        60 | 81 | 164 | 192 | 193 | 194 | 195 | 291 | 497 | 516 => ErrorClass::Destination,
        // Data refused: syntax/parse of the sent rows, type mismatch, incorrect data, no such
        // column, too large string, value out of range, constraint violation.
        6 | 16 | 26 | 27 | 32 | 33 | 38 | 41 | 53 | 69 | 70 | 72 | 117 | 131 | 321 | 395 | 469
        | 472 => ErrorClass::Permanent,
        // TIMEOUT_EXCEEDED, TOO_MANY_SIMULTANEOUS_QUERIES, NO_FREE_CONNECTION, SOCKET_TIMEOUT,
        // NETWORK_ERROR, MEMORY_LIMIT_EXCEEDED, TABLE_IS_READ_ONLY, TOO_MANY_PARTS,
        // UNKNOWN_STATUS_OF_INSERT, and everything we do not know.
        _ => ErrorClass::Retryable,
    }
}

/// Permanent errors that one row can cause while its neighbours are fine (a constraint, an
/// unparseable or out-of-range value). Only these are worth splitting a batch for; a
/// schema-level refusal (missing column, type mismatch) fails every row alike, so the batch
/// goes to dead letters whole instead of being inserted row by row.
pub fn row_specific(code: Option<u32>) -> bool {
    matches!(
        code,
        Some(6 | 26 | 27 | 38 | 41 | 69 | 72 | 117 | 131 | 321 | 395 | 469 | 472)
    )
}

pub fn classify(err: &Error) -> ErrorClass {
    match err {
        Error::BadResponse(msg) => match exception_code(msg) {
            Some(code) => classify_code(code),
            None => {
                // An HTTP status without an exception code: 401/403/404 mean the endpoint or
                // credentials are wrong (hold); 5xx, 408, 429 are the server struggling.
                let status: Option<u16> =
                    msg.split_whitespace().next().and_then(|s| s.parse().ok());
                match status {
                    Some(401 | 403 | 404) => ErrorClass::Destination,
                    _ => ErrorClass::Retryable,
                }
            }
        },
        // A row our own type could not serialize is a bug in this build, not in the data;
        // retrying will not help, but dropping would lose it: treat as permanent so the
        // batch is isolated into dead letters where it can be replayed after an upgrade.
        Error::SchemaMismatch(_) | Error::Custom(_) => ErrorClass::Permanent,
        _ => ErrorClass::Retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_from_messages() {
        assert_eq!(
            exception_code("Code: 60. DB::Exception: Table clicktrail.events doesn't exist"),
            Some(60)
        );
        assert_eq!(
            exception_code("Code: 16, e.displayText() = DB::Exception: No such column"),
            Some(16)
        );
        assert_eq!(exception_code("252"), Some(252));
        assert_eq!(exception_code("500 Internal Server Error"), None);
    }

    #[test]
    fn classes() {
        let bad = |m: &str| classify(&Error::BadResponse(m.into()));
        assert_eq!(
            bad("Code: 252. DB::Exception: Too many parts"),
            ErrorClass::Retryable
        );
        assert_eq!(
            bad("Code: 241. DB::Exception: Memory limit"),
            ErrorClass::Retryable
        );
        assert_eq!(
            bad("Code: 16. DB::Exception: No such column selector"),
            ErrorClass::Permanent
        );
        assert_eq!(
            bad("Code: 53. DB::Exception: Type mismatch"),
            ErrorClass::Permanent
        );
        assert_eq!(
            bad("Code: 469. DB::Exception: Constraint violated"),
            ErrorClass::Permanent
        );
        assert_eq!(
            bad("Code: 60. DB::Exception: Table doesn't exist"),
            ErrorClass::Destination
        );
        assert_eq!(
            bad("Code: 81. DB::Exception: Database doesn't exist"),
            ErrorClass::Destination
        );
        assert_eq!(
            bad("Code: 516. DB::Exception: Authentication failed"),
            ErrorClass::Destination
        );
        assert_eq!(
            bad("Code: 99999. DB::Exception: something new"),
            ErrorClass::Retryable
        );
        assert_eq!(bad("503 Service Unavailable"), ErrorClass::Retryable);
        assert_eq!(bad("404 Not Found"), ErrorClass::Destination);
        assert_eq!(classify(&Error::TimedOut), ErrorClass::Retryable);
        assert_eq!(
            classify(&Error::Network("reset".into())),
            ErrorClass::Retryable
        );
    }

    #[test]
    fn only_row_level_refusals_split() {
        assert!(row_specific(Some(469)));
        assert!(row_specific(Some(117)));
        assert!(!row_specific(Some(16)), "a missing column fails every row");
        assert!(!row_specific(Some(53)));
        assert!(!row_specific(None));
    }
}
