//! Email validation and normalisation, bit-for-bit compatible with the legacy
//! Node.js backend.
//!
//! The Node.js service validated addresses with express-validator 7, i.e.
//! validator.js 13.15: `isEmail(str)` and then `normalizeEmail(str)`, both
//! with their default options. Stored rows contain the normalised form, so
//! this module is a faithful port of those two functions (see
//! `node_modules/validator/lib/{isEmail,isFQDN,isByteLength,normalizeEmail}.js`),
//! including their quirks. It is tested against vectors produced by the real
//! library (`scripts/fixtures/gen-email-vectors.mjs`).
//!
//! JavaScript strings are sequences of UTF-16 code units and validator.js's
//! regular expressions carry no `u` flag, so they also match code units. The
//! port therefore measures "`.length`" in UTF-16 code units, byte lengths
//! (`isByteLength`, which counts UTF-8 bytes via `encodeURI`) in UTF-8 bytes,
//! and treats a supplementary-plane character as two surrogate code units
//! (`U+D800..=U+DFFF`) wherever a character class is involved.

/// `defaultMaxEmailLength` in isEmail.js, compared with `str.length`
/// (UTF-16 code units).
const MAX_EMAIL_LENGTH: usize = 254;
/// Maximum local part length in UTF-8 bytes (`isByteLength(user, {max: 64})`).
const MAX_LOCAL_PART_BYTES: usize = 64;
/// Maximum domain length in UTF-8 bytes (`isByteLength(domain, {max: 254})`).
const MAX_DOMAIN_BYTES: usize = 254;
/// Maximum FQDN label length in UTF-16 code units (isFQDN.js `part.length > 63`).
const MAX_LABEL_LENGTH: usize = 63;

/// Domains handled like iCloud by `normalizeEmail` (`icloud_domains`).
const ICLOUD_DOMAINS: &[&str] = &["icloud.com", "me.com"];

/// Domains handled like Outlook.com by `normalizeEmail` (`outlookdotcom_domains`).
const OUTLOOKDOTCOM_DOMAINS: &[&str] = &[
    "hotmail.at",
    "hotmail.be",
    "hotmail.ca",
    "hotmail.cl",
    "hotmail.co.il",
    "hotmail.co.nz",
    "hotmail.co.th",
    "hotmail.co.uk",
    "hotmail.com",
    "hotmail.com.ar",
    "hotmail.com.au",
    "hotmail.com.br",
    "hotmail.com.gr",
    "hotmail.com.mx",
    "hotmail.com.pe",
    "hotmail.com.tr",
    "hotmail.com.vn",
    "hotmail.cz",
    "hotmail.de",
    "hotmail.dk",
    "hotmail.es",
    "hotmail.fr",
    "hotmail.hu",
    "hotmail.id",
    "hotmail.ie",
    "hotmail.in",
    "hotmail.it",
    "hotmail.jp",
    "hotmail.kr",
    "hotmail.lv",
    "hotmail.my",
    "hotmail.ph",
    "hotmail.pt",
    "hotmail.sa",
    "hotmail.sg",
    "hotmail.sk",
    "live.be",
    "live.co.uk",
    "live.com",
    "live.com.ar",
    "live.com.mx",
    "live.de",
    "live.es",
    "live.eu",
    "live.fr",
    "live.it",
    "live.nl",
    "msn.com",
    "outlook.at",
    "outlook.be",
    "outlook.cl",
    "outlook.co.il",
    "outlook.co.nz",
    "outlook.co.th",
    "outlook.com",
    "outlook.com.ar",
    "outlook.com.au",
    "outlook.com.br",
    "outlook.com.gr",
    "outlook.com.pe",
    "outlook.com.tr",
    "outlook.com.vn",
    "outlook.cz",
    "outlook.de",
    "outlook.dk",
    "outlook.es",
    "outlook.fr",
    "outlook.hu",
    "outlook.id",
    "outlook.ie",
    "outlook.in",
    "outlook.it",
    "outlook.jp",
    "outlook.kr",
    "outlook.lv",
    "outlook.my",
    "outlook.ph",
    "outlook.pt",
    "outlook.sa",
    "outlook.sg",
    "outlook.sk",
    "passport.com",
];

/// Domains handled like Yahoo by `normalizeEmail` (`yahoo_domains`).
const YAHOO_DOMAINS: &[&str] = &[
    "rocketmail.com",
    "yahoo.ca",
    "yahoo.co.uk",
    "yahoo.com",
    "yahoo.de",
    "yahoo.fr",
    "yahoo.in",
    "yahoo.it",
    "ymail.com",
];

/// Domains rewritten to `yandex.ru` by `normalizeEmail` (`yandex_domains`).
const YANDEX_DOMAINS: &[&str] = &[
    "yandex.ru",
    "yandex.ua",
    "yandex.kz",
    "yandex.com",
    "yandex.by",
    "ya.ru",
];

/// Returns whether `input` is an email address according to validator.js
/// 13.15 `isEmail(input)` with default options.
///
/// The defaults are: no display name (`allow_display_name: false`),
/// `require_tld: true`, `allow_utf8_local_part: true`,
/// `allow_ip_domain: false`, `allow_underscores: false`,
/// `domain_specific_validation: false`, `ignore_max_length: false`, no
/// blacklisted characters and no host black/white list. Concretely:
///
/// - the whole input is at most 254 UTF-16 code units;
/// - it is split at the *last* `@` (no `@` at all means an empty local part);
/// - the local part is at most 64 UTF-8 bytes, the domain at most 254;
/// - the domain is an FQDN (see [`is_fqdn`]); IP literals are rejected;
/// - a local part that starts and ends with `"` is checked as a quoted
///   string (a lone `"` counts as the empty quoted string, as in
///   validator.js); otherwise each dot-separated atom must be non-empty and
///   made of ASCII letters, digits, ``!#$%&'*+-/=?^_`{|}~`` or characters in
///   `U+00A1..=U+D7FF`, `U+F900..=U+FDCF`, `U+FDF0..=U+FFEF`.
pub fn is_email(input: &str) -> bool {
    if utf16_len(input) > MAX_EMAIL_LENGTH {
        return false;
    }
    let (user, domain) = split_at_last_at(input);
    if user.len() > MAX_LOCAL_PART_BYTES || domain.len() > MAX_DOMAIN_BYTES {
        return false;
    }
    if !is_fqdn(domain) {
        // `allow_ip_domain` is false by default, so no IP fallback.
        return false;
    }
    if user.starts_with('"') && user.ends_with('"') {
        // `user.slice(1, user.length - 1)`, which is "" for a lone `"`.
        let inner = user.get(1..user.len() - 1).unwrap_or("");
        return is_quoted_local_part(inner);
    }
    user.split('.').all(is_local_atom)
}

/// Returns the normalised form of `input` as validator.js 13.15
/// `normalizeEmail(input)` with default options does, or `None` where it
/// returns `false`.
///
/// The input is not validated. It is split at the last `@`; the domain is
/// always lowercased and the local part is lowercased too
/// (`all_lowercase`). In addition, by domain:
///
/// - `gmail.com`, `googlemail.com`: drop everything from the first `+`,
///   remove single dots (runs of two or more dots are kept), and rewrite the
///   domain to `gmail.com`;
/// - iCloud (`icloud.com`, `me.com`) and Outlook.com (hotmail, live, msn,
///   outlook, passport…): drop everything from the first `+`;
/// - Yahoo (yahoo, ymail, rocketmail…): drop everything from the last `-`;
/// - Yandex (`yandex.*`, `ya.ru`): rewrite the domain to `yandex.ru`.
///
/// For Gmail, iCloud, Outlook.com and Yahoo an empty local part after those
/// removals yields `None`.
pub fn normalize_email(input: &str) -> Option<String> {
    let (user, domain) = split_at_last_at(input);
    let domain = domain.to_lowercase();
    let domain = domain.as_str();

    let (user, domain) = if domain == "gmail.com" || domain == "googlemail.com" {
        let user = remove_single_dots(before_first_plus(user));
        if user.is_empty() {
            return None;
        }
        (user.to_lowercase(), "gmail.com")
    } else if ICLOUD_DOMAINS.contains(&domain) || OUTLOOKDOTCOM_DOMAINS.contains(&domain) {
        let user = before_first_plus(user);
        if user.is_empty() {
            return None;
        }
        (user.to_lowercase(), domain)
    } else if YAHOO_DOMAINS.contains(&domain) {
        // `components.slice(0, -1).join('-')` when there is at least one `-`.
        let user = user.rsplit_once('-').map_or(user, |(head, _)| head);
        if user.is_empty() {
            return None;
        }
        (user.to_lowercase(), domain)
    } else if YANDEX_DOMAINS.contains(&domain) {
        (user.to_lowercase(), "yandex.ru")
    } else {
        (user.to_lowercase(), domain)
    };
    Some(format!("{user}@{domain}"))
}

/// `str.split('@')`, then `pop()` the domain and `join('@')` the rest.
fn split_at_last_at(s: &str) -> (&str, &str) {
    s.rsplit_once('@').unwrap_or(("", s))
}

/// `str.split('+')[0]`.
fn before_first_plus(s: &str) -> &str {
    s.split_once('+').map_or(s, |(head, _)| head)
}

/// `str.replace(/\.+/g, m => m.length > 1 ? m : '')`: drops lone dots and
/// keeps runs of two or more.
fn remove_single_dots(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find('.') {
        out.push_str(&rest[..start]);
        let run = rest[start..].bytes().take_while(|&b| b == b'.').count();
        if run > 1 {
            out.push_str(&rest[start..start + run]);
        }
        rest = &rest[start + run..];
    }
    out.push_str(rest);
    out
}

/// JavaScript `str.length`: the number of UTF-16 code units.
fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// JavaScript's `\s` (ECMAScript WhiteSpace and LineTerminator).
fn is_js_whitespace(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r' | ' ' | '\u{A0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200A}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202F}'
                | '\u{205F}'
                | '\u{3000}'
                | '\u{FEFF}'
    )
}

/// validator.js `isFQDN(domain, {require_tld: true, allow_underscores:
/// false, ignore_max_length: false})`, i.e. also without trailing dot,
/// numeric TLD or wildcard.
fn is_fqdn(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let tld = labels[labels.len() - 1];
    if !is_tld(tld) || tld.chars().any(is_js_whitespace) {
        return false;
    }
    // `/^\d+$/` (ASCII digits): already excluded by `is_tld`, kept for
    // fidelity with the source.
    if !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    labels.into_iter().all(is_fqdn_label)
}

/// `/^([a-z\u00A1-\u00A8\u00AA-\uD7FF\uF900-\uFDCF\uFDF0-\uFFEF]{2,}|xn[a-z0-9-]{2,})$/i`.
fn is_tld(tld: &str) -> bool {
    // Every character accepted by the first alternative is in the BMP, so
    // counting chars is counting UTF-16 code units here.
    let letters = tld.chars().count() >= 2
        && tld.chars().all(|c| {
            c.is_ascii_alphabetic()
                || matches!(c, '\u{A1}'..='\u{A8}' | '\u{AA}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFEF}')
        });
    let punycode = tld.len() >= 4
        && tld.as_bytes()[..2].eq_ignore_ascii_case(b"xn")
        && tld.as_bytes()[2..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-');
    letters || punycode
}

/// One label of isFQDN.js `parts.every(...)` with underscores disallowed.
fn is_fqdn_label(label: &str) -> bool {
    if label.is_empty() || utf16_len(label) > MAX_LABEL_LENGTH {
        return false;
    }
    // `/^[a-z_\u00a1-\uffff0-9-]+$/i` on UTF-16 code units: surrogates are
    // inside `\u00a1-\uffff`, so every non-BMP character passes too.
    // `/_/` then rejects underscores (allow_underscores is false), and
    // `/[\uff01-\uff5e]/` rejects full-width ASCII forms.
    let chars_ok = label.chars().all(|c| {
        (c.is_ascii_alphanumeric() || c == '-' || c >= '\u{A1}')
            && !matches!(c, '\u{FF01}'..='\u{FF5E}')
    });
    chars_ok && !label.starts_with('-') && !label.ends_with('-')
}

/// One dot-separated atom of an unquoted local part:
/// ``/^[a-z\d!#\$%&'\*\+\-\/=\?\^_`{\|}~\u00A1-\uD7FF\uF900-\uFDCF\uFDF0-\uFFEF]+$/i``.
fn is_local_atom(atom: &str) -> bool {
    !atom.is_empty()
        && atom.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || "!#$%&'*+-/=?^_`{|}~".contains(c)
                || matches!(c, '\u{A1}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFEF}')
        })
}

/// The inside of a quoted local part, `quotedEmailUserUtf8` in isEmail.js:
/// a sequence of plain characters or `\`-escaped characters.
fn is_quoted_local_part(inner: &str) -> bool {
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        let ok = if c == '\\' {
            chars.next().is_some_and(is_quoted_escaped_char)
        } else {
            is_quoted_plain_char(c)
        };
        if !ok {
            return false;
        }
    }
    true
}

/// `[\s\x01-\x08\x0b\x0c\x0e-\x1f\x7f\x21\x23-\x5b\x5d-\x7e\u00A0-\uD7FF\uF900-\uFDCF\uFDF0-\uFFEF]`:
/// everything except NUL, `"`, `\`, C1 controls and the code points outside
/// the listed BMP ranges (every `\s` character falls inside them).
fn is_quoted_plain_char(c: char) -> bool {
    matches!(
        c,
        '\u{01}'..='\u{21}'
            | '\u{23}'..='\u{5B}'
            | '\u{5D}'..='\u{7F}'
            | '\u{A0}'..='\u{D7FF}'
            | '\u{F900}'..='\u{FDCF}'
            | '\u{FDF0}'..='\u{FFEF}'
    )
}

/// `[\x01-\x09\x0b\x0c\x0d-\x7f\u00A0-\uD7FF\uF900-\uFDCF\uFDF0-\uFFEF]`: what
/// may follow a `\` in a quoted local part (no NUL, no line feed).
fn is_quoted_escaped_char(c: char) -> bool {
    matches!(
        c,
        '\u{01}'..='\u{09}'
            | '\u{0B}'..='\u{7F}'
            | '\u{A0}'..='\u{D7FF}'
            | '\u{F900}'..='\u{FDCF}'
            | '\u{FDF0}'..='\u{FFEF}'
    )
}

#[cfg(test)]
mod tests {
    use super::{is_email, normalize_email};

    #[derive(Debug, serde::Deserialize)]
    struct Vector {
        input: String,
        #[serde(rename = "isEmail")]
        is_email: bool,
        normalized: Option<String>,
    }

    /// Produced by `scripts/fixtures/gen-email-vectors.mjs` with validator.js.
    const VECTORS: &str = include_str!("../tests/fixtures/email_vectors.json");

    fn vectors() -> Vec<Vector> {
        serde_json::from_str(VECTORS).expect("email_vectors.json parses")
    }

    #[test]
    fn vectors_are_substantial() {
        let vectors = vectors();
        assert!(vectors.len() >= 150, "only {} vectors", vectors.len());
        assert!(vectors.iter().any(|v| v.is_email));
        assert!(vectors.iter().any(|v| !v.is_email));
        assert!(vectors.iter().any(|v| v.normalized.is_none()));
    }

    #[test]
    fn is_email_matches_validator_js() {
        let vectors = vectors();
        let mismatches: Vec<String> = vectors
            .iter()
            .filter(|v| is_email(&v.input) != v.is_email)
            .map(|v| format!("{:?}: validator.js says {}", v.input, v.is_email))
            .collect();
        assert!(
            mismatches.is_empty(),
            "{} of {} vectors disagree with validator.js isEmail, first ones:\n{}",
            mismatches.len(),
            vectors.len(),
            mismatches[..mismatches.len().min(20)].join("\n"),
        );
    }

    #[test]
    fn normalize_email_matches_validator_js() {
        let vectors = vectors();
        let mismatches: Vec<String> = vectors
            .iter()
            .filter_map(|v| {
                let ours = normalize_email(&v.input);
                (ours != v.normalized).then(|| {
                    format!(
                        "{:?}: validator.js gives {:?}, we give {:?}",
                        v.input, v.normalized, ours
                    )
                })
            })
            .collect();
        assert!(
            mismatches.is_empty(),
            "{} of {} vectors disagree with validator.js normalizeEmail, first ones:\n{}",
            mismatches.len(),
            vectors.len(),
            mismatches[..mismatches.len().min(20)].join("\n"),
        );
    }

    #[test]
    fn readable_validation_cases() {
        for ok in [
            "foo@bar.com",
            "Foo.Bar+x@GoogleMail.com",
            "\"foo bar\"@example.com",
            "élève@exemple.fr",
            "user@xn--mller-kva.de",
            "user@müller.de",
        ] {
            assert!(is_email(ok), "{ok:?} should be valid");
        }
        for bad in [
            "",
            "@",
            "foo",
            "foo@localhost",
            "foo@example.123",
            "foo@example.com.",
            "foo@exa..mple.com",
            "foo..bar@example.com",
            "foo@-example.com",
            "foo@ex_ample.com",
            "foo bar@example.com",
            "foo@[127.0.0.1]",
            "John <john@example.com>",
        ] {
            assert!(!is_email(bad), "{bad:?} should be invalid");
        }
        let local64 = "a".repeat(64);
        assert!(is_email(&format!("{local64}@example.com")));
        assert!(!is_email(&format!("{local64}a@example.com")));
    }

    #[test]
    fn readable_normalization_cases() {
        let cases = [
            ("Foo.Bar+x@GoogleMail.com", Some("foobar@gmail.com")),
            ("foo..bar@gmail.com", Some("foo..bar@gmail.com")),
            ("John.Doe+news@Outlook.com", Some("john.doe@outlook.com")),
            ("Tim+x@ME.com", Some("tim@me.com")),
            ("john-doe-news@yahoo.com", Some("john-doe@yahoo.com")),
            ("Ivan@Ya.ru", Some("ivan@yandex.ru")),
            (
                "Mixed.Case+Tag@Example.COM",
                Some("mixed.case+tag@example.com"),
            ),
            ("+only-a-tag@gmail.com", None),
            ("-news@yahoo.com", None),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_email(input).as_deref(), expected, "{input:?}");
        }
    }
}
