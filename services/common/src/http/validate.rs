//! Field validation in the style of express-validator: every failing rule adds
//! its own `{field, message}` entry, in declaration order.

use serde_json::Value;

use super::error::{ApiError, FieldError};

/// Collects rule failures and turns them into the 400 validation envelope.
#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `message` for `field` unless `ok` holds.
    pub fn check(&mut self, ok: bool, field: &str, message: &str) -> &mut Self {
        if !ok {
            self.errors.push(FieldError {
                field: field.to_owned(),
                message: message.to_owned(),
            });
        }
        self
    }

    /// Whether any rule has failed so far.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// `Ok(())` when every rule passed, else the validation error.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

/// The string express-validator would validate for a body value: strings as they
/// are, numbers and booleans as their JavaScript text, absent/null as `""`.
pub fn as_text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        Some(Value::Bool(flag)) => flag.to_string(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| as_text(Some(item)))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(_)) => "[object Object]".to_owned(),
    }
}

/// validator.js `trim()`: strips JavaScript whitespace (`\s`, which includes
/// U+FEFF) from both ends.
pub fn js_trim(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || c == '\u{FEFF}')
}

/// JavaScript truthiness of a body value (`undefined`, `null`, `false`, `0`,
/// `NaN` and `""` are falsy).
pub fn js_truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(Value::Number(number)) => number.as_f64().is_some_and(|n| n != 0.0),
        Some(Value::String(text)) => !text.is_empty(),
        Some(_) => true,
    }
}

/// Length as validator.js `isLength` counts it: code points, not counting
/// variation selectors.
pub fn js_length(text: &str) -> usize {
    text.chars()
        .filter(|c| *c != '\u{FE0E}' && *c != '\u{FE0F}')
        .count()
}

/// validator.js `isUUID` (any version): 8-4-4-4-12 hex digits.
pub fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn collects_every_failure_in_order() {
        let mut v = Validator::new();
        v.check(false, "a", "one")
            .check(true, "a", "two")
            .check(false, "b", "three");
        match v.finish() {
            Err(ApiError::Validation(errors)) => {
                assert_eq!(errors.len(), 2);
                assert_eq!(errors[0].field, "a");
                assert_eq!(errors[1].message, "three");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn text_coercion_follows_javascript() {
        assert_eq!(as_text(None), "");
        assert_eq!(as_text(Some(&json!(12))), "12");
        assert_eq!(as_text(Some(&json!(true))), "true");
        assert_eq!(as_text(Some(&json!({"a":1}))), "[object Object]");
    }

    #[test]
    fn uuid_shape() {
        assert!(is_uuid("00000000-0000-0000-0000-000000000000"));
        assert!(is_uuid("9B2F3C1E-1D2A-4B3C-8D4E-5F6A7B8C9D0E"));
        assert!(!is_uuid("9b2f3c1e1d2a4b3c8d4e5f6a7b8c9d0e"));
        assert!(!is_uuid("9b2f3c1e-1d2a-4b3c-8d4e-5f6a7b8c9d0g"));
    }

    #[test]
    fn length_ignores_variation_selectors() {
        assert_eq!(js_length("ab\u{FE0F}"), 2);
        assert_eq!(js_length("😀"), 1);
    }
}
