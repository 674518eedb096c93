//! Cron expressions for `schedule: {cron: ...}`: the five classic fields (minute, hour, day of
//! month, month, day of week), in UTC, with `*`, lists, ranges and steps. A day matches when
//! both day fields do, or, when neither is `*`, when either does (as Vixie cron does).
//! Written here rather than taken from a crate: the cron crates on crates.io bring chrono for
//! what is a bit mask per field and a civil-date conversion.

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
}

/// One field: its name, lowest and highest value.
struct Field(&'static str, u32, u32);

const FIELDS: [Field; 5] = [
    Field("minute", 0, 59),
    Field("hour", 0, 23),
    Field("day of month", 1, 31),
    Field("month", 1, 12),
    Field("day of week", 0, 7),
];

impl Cron {
    /// Parses `minute hour day-of-month month day-of-week`; the error names the field and why.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "{text:?} has {} fields; a cron expression has five: minute hour day-of-month month day-of-week \
                 (e.g. \"0 3 * * *\" for 03:00 UTC every day)",
                parts.len()
            ));
        }
        let mut masks = [0u64; 5];
        for ((mask, part), field) in masks.iter_mut().zip(&parts).zip(&FIELDS) {
            *mask = bits(part, field)?;
        }
        // Sunday is 0 or 7.
        let weekdays = ((masks[4] | (masks[4] >> 7)) & 0x7f) as u8;
        Ok(Cron {
            minutes: masks[0],
            hours: masks[1] as u32,
            days: masks[2] as u32,
            months: masks[3] as u16,
            weekdays,
            days_any: parts[2] == "*",
            weekdays_any: parts[4] == "*",
        })
    }

    /// Whether the minute that starts at `unix_minute` (minutes since 1970-01-01 UTC) matches.
    pub fn matches(&self, unix_minute: u64) -> bool {
        let (minute, hour) = (unix_minute % 60, (unix_minute / 60) % 24);
        let days = unix_minute / 1440;
        let (_, month, day) = civil(days);
        let weekday = (days + 4) % 7; // 1970-01-01 was a Thursday
        let day_ok = self.days & (1 << day) != 0;
        let weekday_ok = self.weekdays & (1 << weekday) != 0;
        let date_ok = match (self.days_any, self.weekdays_any) {
            (false, false) => day_ok || weekday_ok,
            _ => day_ok && weekday_ok,
        };
        self.minutes & (1 << minute) != 0 && self.hours & (1 << hour) != 0 && self.months & (1 << month) != 0 && date_ok
    }
}

/// The values a field allows, as bits.
fn bits(part: &str, field: &Field) -> Result<u64, String> {
    let Field(name, low, high) = *field;
    let mut mask = 0u64;
    for item in part.split(',') {
        let bad =
            |why: &str| format!("{name} field {part:?}: {why} (allowed: {low}-{high}, *, a-b, */n, a-b/n, lists)");
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                (r, s.parse::<u32>().ok().filter(|s| *s > 0).ok_or_else(|| bad("a step is a number above 0"))?)
            }
            None => (item, 1),
        };
        let (from, to) = if range == "*" {
            (low, high)
        } else if let Some((a, b)) = range.split_once('-') {
            let number = |t: &str| t.parse::<u32>().map_err(|_| bad(&format!("{t:?} is not a number")));
            (number(a)?, number(b)?)
        } else {
            let n = range.parse::<u32>().map_err(|_| bad(&format!("{range:?} is not a number")))?;
            (n, if item.contains('/') { high } else { n })
        };
        if from < low || to > high || from > to {
            return Err(bad(&format!("{from}-{to} is out of range")));
        }
        let mut v = from;
        while v <= to {
            mask |= 1 << v;
            v += step;
        }
    }
    Ok(mask)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minutes since the epoch of a UTC date and time.
    fn at(y: i64, mo: u32, d: u32, h: u64, mi: u64) -> u64 {
        (0..40_000u64).find(|&days| civil(days) == (y, mo, d)).unwrap() * 1440 + h * 60 + mi
    }

    #[test]
    fn civil_dates_are_right_across_leap_years() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(59), (1970, 3, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(20_784), (2026, 11, 27));
    }

    #[test]
    fn expressions_match_the_minutes_they_name() {
        let daily = Cron::parse("0 3 * * *").unwrap();
        assert!(daily.matches(at(2026, 11, 27, 3, 0)));
        assert!(!daily.matches(at(2026, 11, 27, 3, 1)));
        assert!(!daily.matches(at(2026, 11, 27, 4, 0)));
        let quarter = Cron::parse("*/15 9-17 * * 1-5").unwrap();
        assert!(quarter.matches(at(2026, 11, 27, 9, 45)), "a Friday");
        assert!(!quarter.matches(at(2026, 11, 28, 9, 45)), "a Saturday");
        assert!(!quarter.matches(at(2026, 11, 27, 18, 0)));
        let sunday = Cron::parse("30 2 * * 7").unwrap();
        assert!(sunday.matches(at(2026, 11, 29, 2, 30)), "7 is Sunday, like 0");
        // Both day fields restricted: either matches.
        let either = Cron::parse("0 0 1 * 1").unwrap();
        assert!(either.matches(at(2026, 12, 1, 0, 0)), "the 1st (a Tuesday)");
        assert!(either.matches(at(2026, 11, 30, 0, 0)), "a Monday");
        assert!(!either.matches(at(2026, 12, 2, 0, 0)));
        let leap = Cron::parse("0 12 29 2 *").unwrap();
        assert!(leap.matches(at(2028, 2, 29, 12, 0)));
    }

    #[test]
    fn bad_expressions_name_the_field_and_why() {
        let e = |t: &str| Cron::parse(t).unwrap_err();
        assert!(e("0 3 * *").contains("has 4 fields; a cron expression has five"), "{}", e("0 3 * *"));
        assert!(e("61 * * * *").contains("minute field \"61\""), "{}", e("61 * * * *"));
        assert!(e("* 24 * * *").contains("hour field"), "{}", e("* 24 * * *"));
        assert!(e("* * 0 * *").contains("day of month field"), "{}", e("* * 0 * *"));
        assert!(e("*/0 * * * *").contains("a step is a number above 0"), "{}", e("*/0 * * * *"));
        assert!(e("* * * jan *").contains("\"jan\" is not a number"), "{}", e("* * * jan *"));
        assert!(e("5-1 * * * *").contains("out of range"), "{}", e("5-1 * * * *"));
    }
}
