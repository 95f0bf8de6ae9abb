//! Content addressing: a record's key is the RIPEMD-160 of the SHA-256 of its value.

use kad_core::{Key, Record, RecordValidator, Rejected, content_key};

/// Accepts a record only when its key is [`content_key`] of its value: on an inbound STORE (a
/// mismatch is refused with an error answer) and on every value a lookup receives (a mismatch is
/// dropped, counted in `Stats::values_rejected`, and the lookup asks the next holder).
///
/// Content-addressed values are immutable, so every valid candidate is the same value; `select`
/// keeps the engine's default (the most recently published copy).
///
/// ```
/// use kad_core::{Record, RecordValidator};
/// use kad_plugin_storage::{ContentValidator, content_key};
///
/// let good = Record::new(content_key(b"hello"), &b"hello"[..], None, 0, 60_000);
/// assert!(ContentValidator.validate(&good).is_ok());
/// let forged = Record::new(content_key(b"hello"), &b"HELLO"[..], None, 0, 60_000);
/// assert!(ContentValidator.validate(&forged).is_err());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ContentValidator;

impl RecordValidator for ContentValidator {
    fn validate(&self, record: &Record) -> Result<(), Rejected> {
        if content_key(&record.value) == record.key {
            Ok(())
        } else {
            Err(Rejected(
                "not content-addressed: the key is not RIPEMD-160(SHA-256(value))".into(),
            ))
        }
    }

    fn select(&self, _key: &Key, _candidates: &[Record]) -> usize {
        0 // every valid candidate holds the same bytes
    }
}
