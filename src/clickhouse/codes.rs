//! ClickHouse exception codes: one table, each code with its class, whether a single row can
//! cause it, and the label it carries in metrics and dead letters. The class alone decides
//! what the sink does with a refused batch:
//! - [`ErrorClass::Retryable`]: the server or the network is struggling; resend the same batch
//!   after backoff. Every code not in the table is retryable: holding a batch too long is
//!   recoverable, dropping it is not.
//! - [`ErrorClass::Destination`]: the database or table is missing, or we may not write to it.
//!   Resending works once an operator fixes it; dropping would lose everything: hold and alert.
//! - [`ErrorClass::SchemaWide`]: the table refuses the shape of every row alike (a missing
//!   column, a type the rows do not match). Splitting the batch cannot help, and dead-lettering
//!   would move the whole stream out of ClickHouse: hold and alert, like a destination.
//! - [`ErrorClass::RowLevel`]: one row's value is refused (a constraint, an unparseable or
//!   out-of-range value) while its neighbours are fine: split the batch to isolate it.
//!
//! Names after ClickHouse's `src/Common/ErrorCodes.cpp`.

use ::clickhouse::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Retryable,
    Destination,
    SchemaWide,
    RowLevel,
}

impl ErrorClass {
    /// The `class` label of `clicktrail_sink_insert_errors_total`: `permanent` is the
    /// row-level refusal that sends rows to dead letters; `schema` is held like `destination`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Destination => "destination",
            ErrorClass::SchemaWide => "schema",
            ErrorClass::RowLevel => "permanent",
        }
    }

    /// Resending the same bytes cannot work until an operator changes ClickHouse: the batch is
    /// held (destination, schema-wide), never dead-lettered.
    pub fn is_held(self) -> bool {
        matches!(self, ErrorClass::Destination | ErrorClass::SchemaWide)
    }
}

/// One known exception code.
#[derive(Debug, Clone, Copy)]
pub struct Code {
    pub code: u32,
    pub name: &'static str,
    pub class: ErrorClass,
    /// Bounded label for metrics and dead-letter reason classes.
    pub label: &'static str,
}

impl Code {
    /// One row can cause it while its neighbours are fine: worth splitting a batch for.
    pub fn row_specific(&self) -> bool {
        self.class == ErrorClass::RowLevel
    }
}

macro_rules! codes {
    ($($code:literal $name:ident $class:ident $label:literal,)*) => {
        /// Every exception code clicktrail treats specially.
        pub const CODES: &[Code] = &[
            $(Code { code: $code, name: stringify!($name), class: ErrorClass::$class, label: $label },)*
        ];
    };
}

codes! {
    // The rows are refused for their values.
    6 CANNOT_PARSE_TEXT RowLevel "invalid_value",
    26 CANNOT_PARSE_QUOTED_STRING RowLevel "invalid_value",
    27 CANNOT_PARSE_INPUT_ASSERTION_FAILED RowLevel "invalid_value",
    38 CANNOT_PARSE_DATE RowLevel "invalid_value",
    41 CANNOT_PARSE_DATETIME RowLevel "invalid_value",
    69 ARGUMENT_OUT_OF_BOUND RowLevel "invalid_value",
    72 CANNOT_PARSE_NUMBER RowLevel "invalid_value",
    117 INCORRECT_DATA RowLevel "invalid_value",
    131 TOO_LARGE_STRING_SIZE RowLevel "invalid_value",
    321 VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE RowLevel "invalid_value",
    395 FUNCTION_THROW_IF_VALUE_IS_NON_ZERO RowLevel "constraint",
    469 VIOLATED_CONSTRAINT RowLevel "constraint",
    472 SETTING_CONSTRAINT_VIOLATION RowLevel "constraint",
    // The table refuses every row alike.
    10 NOT_FOUND_COLUMN_IN_BLOCK SchemaWide "no_such_column",
    16 NO_SUCH_COLUMN_IN_TABLE SchemaWide "no_such_column",
    47 UNKNOWN_IDENTIFIER SchemaWide "no_such_column",
    32 ATTEMPT_TO_READ_AFTER_EOF SchemaWide "type_mismatch",
    33 CANNOT_READ_ALL_DATA SchemaWide "type_mismatch",
    53 TYPE_MISMATCH SchemaWide "type_mismatch",
    70 CANNOT_CONVERT_TYPE SchemaWide "type_mismatch",
    // The destination is missing or closed to us.
    60 UNKNOWN_TABLE Destination "unknown_table",
    81 UNKNOWN_DATABASE Destination "unknown_database",
    164 READONLY Destination "access",
    192 UNKNOWN_USER Destination "access",
    193 WRONG_PASSWORD Destination "access",
    194 REQUIRED_PASSWORD Destination "access",
    195 IP_ADDRESS_NOT_ALLOWED Destination "access",
    291 DATABASE_ACCESS_DENIED Destination "access",
    497 ACCESS_DENIED Destination "access",
    516 AUTHENTICATION_FAILED Destination "access",
    // Named for the reader: the server is struggling, retry (any unlisted code is too).
    159 TIMEOUT_EXCEEDED Retryable "timeout",
    202 TOO_MANY_SIMULTANEOUS_QUERIES Retryable "overloaded",
    203 NO_FREE_CONNECTION Retryable "overloaded",
    209 SOCKET_TIMEOUT Retryable "network",
    210 NETWORK_ERROR Retryable "network",
    241 MEMORY_LIMIT_EXCEEDED Retryable "overloaded",
    242 TABLE_IS_READ_ONLY Retryable "overloaded",
    252 TOO_MANY_PARTS Retryable "overloaded",
    319 UNKNOWN_STATUS_OF_INSERT Retryable "network",
}

/// `ILLEGAL_COLUMN`, which 18.16 answers to an `ADD COLUMN` of a column that exists: a migration
/// re-run after a crash between its `ALTER` and its record (18.16 has no `IF NOT EXISTS` there).
pub fn is_column_exists(err: &Error) -> bool {
    matches!(err, Error::BadResponse(m) if exception_code(m) == Some(44))
}

/// The entry of a code, if clicktrail knows it.
pub fn lookup(code: u32) -> Option<&'static Code> {
    CODES.iter().find(|c| c.code == code)
}

pub fn classify_code(code: u32) -> ErrorClass {
    lookup(code).map_or(ErrorClass::Retryable, |c| c.class)
}

/// Whether the code is a row-level refusal (see [`Code::row_specific`]).
pub fn row_specific(code: Option<u32>) -> bool {
    code.and_then(lookup).is_some_and(Code::row_specific)
}

/// The bounded label of a refusal: its code's label, or `other`.
pub fn label(code: Option<u32>) -> &'static str {
    code.and_then(lookup).map_or("other", |c| c.label)
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

/// The class of a client error.
pub fn classify(err: &Error) -> ErrorClass {
    match err {
        // The server's own connection to another server broke (a Distributed insert to a
        // replica that died: "Code: 32 ... Attempt to read after eof: while receiving packet
        // from HOST"): the codes that mean a malformed body when they come from our insert
        // mean a lost peer here, and the retry goes to a live one.
        Error::BadResponse(msg) if msg.contains("while receiving packet from") => {
            ErrorClass::Retryable
        }
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
        // retrying will not help, but dropping would lose it: held like a schema refusal, in
        // the spool, until an upgrade fixes it.
        Error::SchemaMismatch(_) | Error::Custom(_) => ErrorClass::SchemaWide,
        _ => ErrorClass::Retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_lost_mid_insert_is_retryable_not_a_schema_refusal() {
        let lost = Error::BadResponse("bad response: Code: 32, e.displayText() = DB::Exception: Attempt to read after eof: while receiving packet from 127.0.0.1:23200: Insertion status: Wrote 1 blocks and 0 rows on shard 0 replica 0, 127.0.0.1:23200".into());
        assert_eq!(classify(&lost), ErrorClass::Retryable);
        let short_body = Error::BadResponse(
            "Code: 32, e.displayText() = DB::Exception: Attempt to read after eof".into(),
        );
        assert_eq!(classify(&short_body), ErrorClass::SchemaWide);
    }

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
    fn one_entry_per_code_and_labels_agree_with_classes() {
        for (i, a) in CODES.iter().enumerate() {
            assert!(
                CODES[i + 1..].iter().all(|b| b.code != a.code),
                "{} listed twice",
                a.code
            );
            let schema_label = matches!(a.label, "no_such_column" | "type_mismatch");
            assert_eq!(
                schema_label,
                a.class == ErrorClass::SchemaWide,
                "{} {}: label {} vs class {:?}",
                a.code,
                a.name,
                a.label,
                a.class
            );
        }
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
            ErrorClass::SchemaWide
        );
        assert_eq!(
            bad("Code: 53. DB::Exception: Type mismatch"),
            ErrorClass::SchemaWide
        );
        assert_eq!(
            bad("Code: 469. DB::Exception: Constraint violated"),
            ErrorClass::RowLevel
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
    fn schema_wide_and_destination_refusals_are_held_row_level_are_not() {
        assert!(classify_code(16).is_held(), "missing column");
        assert!(classify_code(53).is_held(), "type mismatch");
        assert!(classify_code(60).is_held(), "missing table");
        assert!(!classify_code(395).is_held(), "throwIf: one row's value");
        assert!(!classify_code(117).is_held());
        assert!(!classify_code(252).is_held(), "retryable");
        assert_eq!(ErrorClass::SchemaWide.as_str(), "schema");
        assert_eq!(ErrorClass::RowLevel.as_str(), "permanent");
    }

    #[test]
    fn only_row_level_refusals_split() {
        assert!(row_specific(Some(469)));
        assert!(row_specific(Some(117)));
        assert!(!row_specific(Some(16)), "a missing column fails every row");
        assert!(!row_specific(Some(53)));
        assert!(!row_specific(None));
        assert_eq!(label(Some(10)), "no_such_column");
        assert_eq!(label(Some(32)), "type_mismatch");
        assert_eq!(label(Some(395)), "constraint");
        assert_eq!(label(Some(12345)), "other");
    }
}
