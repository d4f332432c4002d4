//! `%START_TIME%`'s clock: Envoy's default (RFC 3339 in UTC with milliseconds,
//! `2026-12-07T14:03:07.123Z`) and the strftime-like formats Envoy accepts in
//! `%START_TIME(...)%`, including its `%f`/`%Nf` (fractions of a second) and `%s` (Unix seconds).
//! Always UTC, as Envoy prints it.

use std::fmt::Write as _;

/// A parsed `%START_TIME(...)%` format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeFormat {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    /// `%Y`
    Year,
    /// `%y`
    Year2,
    /// `%m`
    Month,
    /// `%d`
    Day,
    /// `%e`: the day, space-padded.
    DaySpace,
    /// `%j`
    DayOfYear,
    /// `%H`
    Hour,
    /// `%M`
    Minute,
    /// `%S`
    Second,
    /// `%f` (9 digits) or `%1f` to `%9f`.
    Fraction(u8),
    /// `%s`: seconds since the Unix epoch.
    Epoch,
    /// `%b`, `%h`
    MonthName,
    /// `%B`
    MonthFullName,
    /// `%a`
    WeekdayName,
    /// `%A`
    WeekdayFullName,
    /// `%z`: `+0000`.
    Offset,
    /// `%Z`: `UTC`.
    Zone,
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

impl TimeFormat {
    /// Reads a strftime-like format; an unsupported conversion is an error naming it.
    pub fn parse(spec: &str) -> Result<TimeFormat, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = spec.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                text.push(c);
                continue;
            }
            let mut digits = None;
            if let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                chars.next();
                digits = Some(d as u8);
            }
            let Some(conversion) = chars.next() else {
                return Err("START_TIME's format ends with a lone %".to_owned());
            };
            let expanded: &[Part] = match (digits, conversion) {
                (None, '%') => {
                    text.push('%');
                    continue;
                }
                (None, 'n') => {
                    text.push('\n');
                    continue;
                }
                (None, 't') => {
                    text.push('\t');
                    continue;
                }
                (None, 'f') => &[Part::Fraction(9)],
                (Some(n @ 1..=9), 'f') => &[Part::Fraction(n)],
                (None, 'Y') => &[Part::Year],
                (None, 'y') => &[Part::Year2],
                (None, 'm') => &[Part::Month],
                (None, 'd') => &[Part::Day],
                (None, 'e') => &[Part::DaySpace],
                (None, 'j') => &[Part::DayOfYear],
                (None, 'H') => &[Part::Hour],
                (None, 'M') => &[Part::Minute],
                (None, 'S') => &[Part::Second],
                (None, 's') => &[Part::Epoch],
                (None, 'b' | 'h') => &[Part::MonthName],
                (None, 'B') => &[Part::MonthFullName],
                (None, 'a') => &[Part::WeekdayName],
                (None, 'A') => &[Part::WeekdayFullName],
                (None, 'z') => &[Part::Offset],
                (None, 'Z') => &[Part::Zone],
                (None, 'F') => &[
                    Part::Year,
                    Part::Text(String::new()),
                    Part::Month,
                    Part::Text(String::new()),
                    Part::Day,
                ],
                (None, 'T') => &[
                    Part::Hour,
                    Part::Text(String::new()),
                    Part::Minute,
                    Part::Text(String::new()),
                    Part::Second,
                ],
                (None, 'R') => &[Part::Hour, Part::Text(String::new()), Part::Minute],
                (None, 'D') => &[
                    Part::Month,
                    Part::Text(String::new()),
                    Part::Day,
                    Part::Text(String::new()),
                    Part::Year2,
                ],
                _ => {
                    let written = match digits {
                        Some(d) => format!("%{d}{conversion}"),
                        None => format!("%{conversion}"),
                    };
                    return Err(format!(
                        "START_TIME's format: {written} is not a conversion Trellis supports"
                    ));
                }
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            // The composite conversions' separators.
            let separator = match conversion {
                'F' => "-",
                'T' | 'R' => ":",
                _ => "/",
            };
            parts.extend(expanded.iter().map(|p| match p {
                Part::Text(_) => Part::Text(separator.to_owned()),
                other => other.clone(),
            }));
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(TimeFormat { parts })
    }

    /// Appends the time `unix_nanos` (nanoseconds since the Unix epoch) to `out`.
    pub fn render(&self, unix_nanos: u128, out: &mut String) {
        let c = Civil::of(unix_nanos);
        for part in &self.parts {
            let _ = match part {
                Part::Text(t) => {
                    out.push_str(t);
                    Ok(())
                }
                Part::Year => write!(out, "{:04}", c.year),
                Part::Year2 => write!(out, "{:02}", c.year.rem_euclid(100)),
                Part::Month => write!(out, "{:02}", c.month),
                Part::Day => write!(out, "{:02}", c.day),
                Part::DaySpace => write!(out, "{:2}", c.day),
                Part::DayOfYear => write!(out, "{:03}", c.day_of_year),
                Part::Hour => write!(out, "{:02}", c.hour),
                Part::Minute => write!(out, "{:02}", c.minute),
                Part::Second => write!(out, "{:02}", c.second),
                Part::Fraction(n) => {
                    let digits = format!("{:09}", c.nanos);
                    out.push_str(&digits[..usize::from(*n)]);
                    Ok(())
                }
                Part::Epoch => write!(out, "{}", unix_nanos / 1_000_000_000),
                Part::MonthName => write!(out, "{}", &MONTHS[c.month as usize - 1][..3]),
                Part::MonthFullName => write!(out, "{}", MONTHS[c.month as usize - 1]),
                Part::WeekdayName => write!(out, "{}", &WEEKDAYS[c.weekday as usize][..3]),
                Part::WeekdayFullName => write!(out, "{}", WEEKDAYS[c.weekday as usize]),
                Part::Offset => {
                    out.push_str("+0000");
                    Ok(())
                }
                Part::Zone => {
                    out.push_str("UTC");
                    Ok(())
                }
            };
        }
    }
}

/// Envoy's default `%START_TIME%`: `2026-12-07T14:03:07.123Z`.
pub fn render_default(unix_nanos: u128, out: &mut String) {
    let c = Civil::of(unix_nanos);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.nanos / 1_000_000
    );
}

/// A UTC calendar date and time of day.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    day_of_year: u32,
    weekday: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
}

impl Civil {
    fn of(unix_nanos: u128) -> Civil {
        let secs = (unix_nanos / 1_000_000_000) as i64;
        let nanos = (unix_nanos % 1_000_000_000) as u32;
        let days = secs.div_euclid(86_400);
        let of_day = secs.rem_euclid(86_400) as u32;
        // Days to a proleptic Gregorian date, by 400-year eras (Howard Hinnant's method).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        const BEFORE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let day_of_year = BEFORE[month as usize - 1] + day + u32::from(leap && month > 2);
        Civil {
            year,
            month,
            day,
            day_of_year,
            weekday: (days + 4).rem_euclid(7) as u32,
            hour: of_day / 3600,
            minute: of_day / 60 % 60,
            second: of_day % 60,
            nanos,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(format: &str, nanos: u128) -> String {
        let mut out = String::new();
        TimeFormat::parse(format).unwrap().render(nanos, &mut out);
        out
    }

    #[test]
    fn default_is_rfc3339_with_milliseconds() {
        let mut out = String::new();
        // 2024-02-29T23:59:58.123456789Z, a leap day.
        render_default(1_709_251_198_123_456_789, &mut out);
        assert_eq!(out, "2024-02-29T23:59:58.123Z");
        out.clear();
        render_default(0, &mut out);
        assert_eq!(out, "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn conversions() {
        let t = 1_709_251_198_123_456_789;
        assert_eq!(show("%Y-%m-%dT%H:%M:%S.%3f%z", t), "2024-02-29T23:59:58.123+0000");
        assert_eq!(show("%s.%6f", t), "1709251198.123456");
        assert_eq!(show("%f", t), "123456789");
        assert_eq!(show("%F %T %Z", t), "2024-02-29 23:59:58 UTC");
        assert_eq!(
            show("%a %A %b %B %e %j %y %D %R %%", t),
            "Thu Thursday Feb February 29 060 24 02/29/24 23:59 %"
        );
        // 2000-12-31: day 366 of a leap year divisible by 400.
        assert_eq!(show("%j", 978_220_800_000_000_000), "366");
        assert_eq!(show("no conversions", t), "no conversions");
    }

    #[test]
    fn unsupported_conversions_are_named() {
        assert!(TimeFormat::parse("%Q").unwrap_err().contains("%Q"));
        assert!(TimeFormat::parse("%0f").unwrap_err().contains("%0f"));
        assert!(TimeFormat::parse("%").unwrap_err().contains("lone %"));
        assert!(TimeFormat::parse("%3Y").unwrap_err().contains("%3Y"));
    }

    #[test]
    fn far_times_do_not_panic() {
        let mut out = String::new();
        render_default(u128::MAX, &mut out);
        TimeFormat::parse("%Y %j %a %s").unwrap().render(u128::MAX, &mut out);
    }
}
