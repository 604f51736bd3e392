//! FHIR date, dateTime and instant values as half-open ranges of Unix milliseconds.
//!
//! A FHIR date stands for every instant of its precision: `2021` is the whole year,
//! `2021-06-15` the whole day, `2021-06-15T10:00:00Z` the whole second. Search compares
//! such ranges (FHIR R4 search, section 3.1.1.4.6). A value without a time zone (a date,
//! or a search value such as `2021-06-15T10:00`) is taken as UTC.

/// `[lo, hi)` in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub lo: i64,
    pub hi: i64,
}

/// Open ends of a Period (no start, no end).
pub const MIN: i64 = i64::MIN / 2;
pub const MAX: i64 = i64::MAX / 2;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    days_from_civil(if month == 12 { year + 1 } else { year }, month % 12 + 1, 1)
        - days_from_civil(year, month, 1)
}

const DAY_MS: i64 = 86_400_000;

fn digits(text: &str, len: usize) -> Option<i64> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, `YYYY-MM-DDThh:mm[:ss[.fff]][Z|±hh:mm]`.
pub fn parse(text: &str) -> Option<DateRange> {
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let year = digits(parts.next()?, 4)?;
    let month = parts.next().map(|m| digits(m, 2)).unwrap_or(Some(0))?;
    let day = parts.next().map(|d| digits(d, 2)).unwrap_or(Some(0))?;
    if parts.next().is_some() || month > 12 || (month == 0 && day != 0) {
        return None;
    }
    if month == 0 {
        let lo = days_from_civil(year, 1, 1) * DAY_MS;
        return Some(DateRange {
            lo,
            hi: days_from_civil(year + 1, 1, 1) * DAY_MS,
        });
    }
    if day == 0 {
        return Some(DateRange {
            lo: days_from_civil(year, month, 1) * DAY_MS,
            hi: (days_from_civil(year, month, 1) + days_in_month(year, month)) * DAY_MS,
        });
    }
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let start_of_day = days_from_civil(year, month, day) * DAY_MS;
    let Some(time) = time else {
        return Some(DateRange {
            lo: start_of_day,
            hi: start_of_day + DAY_MS,
        });
    };
    let (clock, offset_ms) = split_zone(time)?;
    let mut fields = clock.split(':');
    let hour = digits(fields.next()?, 2)?;
    let minute = digits(fields.next()?, 2)?;
    let (second, millis, width) = match fields.next() {
        None => (0, 0, 60_000),
        Some(sec) => {
            let (whole, fraction) = match sec.split_once('.') {
                Some((w, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
                    (w, Some(f))
                }
                Some(_) => return None,
                None => (sec, None),
            };
            let second = digits(whole, 2)?;
            match fraction {
                None => (second, 0, 1000),
                Some(f) => {
                    let padded = format!("{:0<3}", &f[..f.len().min(3)]);
                    (second, padded.parse::<i64>().ok()?, 1)
                }
            }
        }
    };
    if fields.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let lo = start_of_day + ((hour * 60 + minute) * 60 + second) * 1000 + millis - offset_ms;
    Some(DateRange { lo, hi: lo + width })
}

/// Splits a zone designator off a time: `10:00:00+02:00` -> (`10:00:00`, 7_200_000).
fn split_zone(time: &str) -> Option<(&str, i64)> {
    if let Some(clock) = time.strip_suffix('Z') {
        return Some((clock, 0));
    }
    match time.rfind(['+', '-']) {
        Some(at) => {
            let (clock, zone) = time.split_at(at);
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (h, m) = zone[1..].split_once(':')?;
            let (h, m) = (digits(h, 2)?, digits(m, 2)?);
            if h > 14 || m > 59 {
                return None;
            }
            Some((clock, sign * (h * 60 + m) * 60_000))
        }
        None => Some((time, 0)),
    }
}

/// Formats milliseconds as a FHIR instant in UTC with millisecond precision.
pub fn format_instant(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let in_day = ms.rem_euclid(DAY_MS);
    let (y, mo, d) = civil_from_days(days);
    let (h, rest) = (in_day / 3_600_000, in_day % 3_600_000);
    let (mi, rest) = (rest / 60_000, rest % 60_000);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{:02}.{:03}Z",
        rest / 1000,
        rest % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        parse(text).unwrap().lo
    }

    #[test]
    fn precisions_become_ranges() {
        let year = parse("2021").unwrap();
        assert_eq!(year.lo, ms("2021-01-01T00:00:00Z"));
        assert_eq!(year.hi, ms("2022-01-01T00:00:00Z"));
        let month = parse("2024-02").unwrap();
        assert_eq!(month.hi - month.lo, 29 * DAY_MS);
        let day = parse("2021-06-15").unwrap();
        assert_eq!(day.hi - day.lo, DAY_MS);
        let second = parse("2021-06-15T10:00:00Z").unwrap();
        assert_eq!(second.hi - second.lo, 1000);
        let milli = parse("2021-06-15T10:00:00.5Z").unwrap();
        assert_eq!(milli.lo - second.lo, 500);
        assert_eq!(milli.hi - milli.lo, 1);
        let minute = parse("2021-06-15T10:00").unwrap();
        assert_eq!(minute.hi - minute.lo, 60_000);
    }

    #[test]
    fn zones_shift_to_utc() {
        assert_eq!(ms("2021-06-15T12:00:00+02:00"), ms("2021-06-15T10:00:00Z"));
        assert_eq!(ms("2021-06-15T08:30:00-01:30"), ms("2021-06-15T10:00:00Z"));
        assert_eq!(ms("1970-01-01T00:00:00Z"), 0);
    }

    #[test]
    fn malformed_dates_are_refused() {
        for bad in [
            "",
            "21",
            "2021-13",
            "2021-02-30",
            "2021-06-15T25:00",
            "2021-6-1",
            "2021-06-15T10:00:00+15:00",
            "2021-06-15T10:00:00.Z",
            "tomorrow",
            "2021-00-10",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn instants_round_trip() {
        for text in [
            "2021-06-15T10:00:00.123Z",
            "1969-12-31T23:59:59.999Z",
            "2000-02-29T00:00:00.000Z",
        ] {
            assert_eq!(format_instant(ms(text)), text);
        }
    }
}
