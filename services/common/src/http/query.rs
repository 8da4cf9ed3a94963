//! Query-string access that never rejects: a malformed query reads as empty,
//! as Express's parser does.

/// The first value of `name` in a raw query string, or `""`.
pub fn param(raw: Option<&str>, name: &str) -> String {
    raw.and_then(|raw| serde_urlencoded::from_str::<Vec<(String, String)>>(raw).ok())
        .and_then(|pairs| pairs.into_iter().find(|(key, _)| key == name))
        .map(|(_, value)| value)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::param;

    #[test]
    fn first_value_or_empty() {
        assert_eq!(param(Some("q=a%20b&q=c"), "q"), "a b");
        assert_eq!(param(Some("x=1"), "q"), "");
        assert_eq!(param(None, "q"), "");
    }
}
