//! Timestamps as the original backend wrote them: JavaScript's
//! `Date.toJSON()`, i.e. UTC with milliseconds and `Z`.

use time::OffsetDateTime;

const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

/// `at` as `YYYY-MM-DDTHH:mm:ss.sssZ`.
pub fn js_time(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .expect("a valid timestamp formats")
}

/// `#[serde(serialize_with = "…")]` helper writing [`js_time`].
pub fn serialize<S: serde::Serializer>(
    at: &OffsetDateTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&js_time(*at))
}

#[cfg(test)]
mod tests {
    use super::js_time;
    use time::macros::datetime;

    #[test]
    fn timestamps_look_like_javascript_dates() {
        assert_eq!(
            js_time(datetime!(2026-11-24 20:05:45.123456 UTC)),
            "2026-11-24T20:05:45.123Z"
        );
        assert_eq!(
            js_time(datetime!(2026-11-24 20:05:45 UTC)),
            "2026-11-24T20:05:45.000Z"
        );
        assert_eq!(
            js_time(datetime!(2026-11-24 20:05:45.1 UTC)),
            "2026-11-24T20:05:45.100Z"
        );
        assert_eq!(
            js_time(datetime!(2026-11-24 21:05:45.5 +1)),
            "2026-11-24T20:05:45.500Z"
        );
    }
}
