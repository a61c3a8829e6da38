//! Budgets that start again every day, week or month (a key's
//! `budget_reset`), as OpenRouter's key limits do: periods are UTC calendar
//! days, weeks from Monday 00:00 and months from the 1st.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetReset {
    Daily,
    Weekly,
    Monthly,
}

pub const NAMES: &str = "daily, weekly, monthly";

impl BudgetReset {
    pub fn parse(s: &str) -> Option<BudgetReset> {
        match s {
            "daily" => Some(BudgetReset::Daily),
            "weekly" => Some(BudgetReset::Weekly),
            "monthly" => Some(BudgetReset::Monthly),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BudgetReset::Daily => "daily",
            BudgetReset::Weekly => "weekly",
            BudgetReset::Monthly => "monthly",
        }
    }

    /// Unix seconds at which the period holding `t` (Unix seconds) began.
    pub fn start(self, t: i64) -> i64 {
        let day = day_of(t);
        let first = match self {
            BudgetReset::Daily => day,
            BudgetReset::Weekly => {
                day - Duration::days(i64::from(day.weekday().num_days_from_monday()))
            }
            BudgetReset::Monthly => day.with_day(1).unwrap_or(day),
        };
        midnight(first)
    }

    /// Unix seconds at which the period holding `t` ends: the next reset.
    pub fn end(self, t: i64) -> i64 {
        let first = day_of(self.start(t));
        let next = match self {
            BudgetReset::Daily => first + Duration::days(1),
            BudgetReset::Weekly => first + Duration::days(7),
            BudgetReset::Monthly => first
                .checked_add_months(chrono::Months::new(1))
                .unwrap_or(first + Duration::days(31)),
        };
        midnight(next)
    }
}

/// The UTC day holding Unix second `t` (out of chrono's range: the epoch).
fn day_of(t: i64) -> NaiveDate {
    DateTime::from_timestamp(t, 0)
        .unwrap_or_default()
        .date_naive()
}

fn midnight(d: NaiveDate) -> i64 {
    Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN))
        .timestamp()
}

/// The RFC 3339 form of Unix second `t`, for messages.
pub fn rfc3339(t: i64) -> String {
    DateTime::from_timestamp(t, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    #[test]
    fn periods_are_utc_days_weeks_from_monday_and_months() {
        // Thursday 2026-12-31 13:45 UTC.
        let t = at("2026-12-31T13:45:00Z");
        let d = BudgetReset::Daily;
        assert_eq!(
            (rfc3339(d.start(t)), rfc3339(d.end(t))),
            ("2026-12-31T00:00:00Z".into(), "2027-01-01T00:00:00Z".into())
        );
        let w = BudgetReset::Weekly;
        assert_eq!(
            (rfc3339(w.start(t)), rfc3339(w.end(t))),
            ("2026-12-28T00:00:00Z".into(), "2027-01-04T00:00:00Z".into())
        );
        let m = BudgetReset::Monthly;
        assert_eq!(
            (rfc3339(m.start(t)), rfc3339(m.end(t))),
            ("2026-12-01T00:00:00Z".into(), "2027-01-01T00:00:00Z".into())
        );
        // The first second of a period is in it; the last one before is not.
        let feb = at("2028-02-01T00:00:00Z");
        assert_eq!(m.start(feb), feb);
        assert_eq!(rfc3339(m.end(feb)), "2028-03-01T00:00:00Z");
        assert_eq!(rfc3339(m.start(feb - 1)), "2028-01-01T00:00:00Z");
        assert_eq!(
            w.start(at("2026-12-28T00:00:00Z")),
            at("2026-12-28T00:00:00Z")
        );
        assert_eq!(
            w.start(at("2026-12-27T23:59:59Z")),
            at("2026-12-21T00:00:00Z")
        );
        for s in ["daily", "weekly", "monthly"] {
            assert_eq!(BudgetReset::parse(s).map(BudgetReset::as_str), Some(s));
        }
        assert_eq!(BudgetReset::parse("yearly"), None);
    }
}
