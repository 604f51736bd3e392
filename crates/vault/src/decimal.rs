//! Exact decimals for number and quantity search (R4 search.html#number): a value as
//! written (`100`, `100.00`, `1E-22`) with its precision, the range that precision
//! implies (`100` is [99.5, 100.5)), and a text key whose byte order is the numbers'
//! order, so the database compares decimals exactly with a plain text comparison, however
//! many digits or however large an exponent they have. No floating point anywhere.

use std::cmp::Ordering;

/// Exponents beyond this (in either direction) are refused: the keys have a fixed-width
/// exponent, and arithmetic aligns digits.
const MAX_EXPONENT: i64 = 100_000;
/// The key's exponent is written as `exponent + OFFSET` in seven digits.
const OFFSET: i64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    negative: bool,
    /// The digits as written, without leading zeros (`"0"` for zero).
    digits: String,
    /// The value is `digits × 10^exponent`; the exponent is that of the last digit
    /// written, which is the value's precision.
    exponent: i64,
}

/// `a` and `b`, digit strings without leading zeros, compared as numbers.
fn compare(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn trim(digits: String) -> String {
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn add_digits(a: &str, b: &str) -> String {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut out = Vec::with_capacity(a.len().max(b.len()) + 1);
    let (mut i, mut j, mut carry) = (a.len(), b.len(), 0u8);
    while i > 0 || j > 0 || carry > 0 {
        let x = if i > 0 {
            i -= 1;
            a[i] - b'0'
        } else {
            0
        };
        let y = if j > 0 {
            j -= 1;
            b[j] - b'0'
        } else {
            0
        };
        let sum = x + y + carry;
        out.push(b'0' + sum % 10);
        carry = sum / 10;
    }
    out.reverse();
    trim(String::from_utf8(out).unwrap_or_default())
}

/// `a - b` for `a >= b`.
fn sub_digits(a: &str, b: &str) -> String {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut out = Vec::with_capacity(a.len());
    let (mut i, mut j, mut borrow) = (a.len(), b.len(), 0i8);
    while i > 0 {
        i -= 1;
        let x = (a[i] - b'0') as i8;
        let y = if j > 0 {
            j -= 1;
            (b[j] - b'0') as i8
        } else {
            0
        };
        let mut d = x - y - borrow;
        borrow = 0;
        if d < 0 {
            d += 10;
            borrow = 1;
        }
        out.push(b'0' + d as u8);
    }
    out.reverse();
    trim(String::from_utf8(out).unwrap_or_default())
}

impl Decimal {
    /// A JSON number or a search value: `-?digits[.digits][e[+-]digits]`.
    pub fn parse(text: &str) -> Option<Self> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(at) => {
                let exp = &rest[at + 1..];
                let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                if digits.is_empty()
                    || digits.len() > 7
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                (&rest[..at], exp.parse::<i64>().ok()?)
            }
            None => (rest, 0),
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((int, frac)) if !frac.is_empty() => (int, frac),
            Some(_) => return None,
            None => (mantissa, ""),
        };
        if int.is_empty()
            || !(int.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        let exponent = exponent - frac.len() as i64;
        if exponent.abs() > MAX_EXPONENT {
            return None;
        }
        let digits = trim(format!("{int}{frac}"));
        Some(Self {
            negative: negative && digits != "0",
            digits,
            exponent,
        })
    }

    fn is_zero(&self) -> bool {
        self.digits == "0"
    }

    /// The digits of `self` with `exponent - to` zeros appended (`to <= exponent`).
    fn aligned(&self, to: i64) -> String {
        let zeros = usize::try_from(self.exponent - to).unwrap_or(0);
        if self.is_zero() {
            return "0".to_owned();
        }
        format!("{}{}", self.digits, "0".repeat(zeros))
    }

    fn add(&self, other: &Self) -> Self {
        let exponent = self.exponent.min(other.exponent);
        let (a, b) = (self.aligned(exponent), other.aligned(exponent));
        let (negative, digits) = if self.negative == other.negative {
            (self.negative, add_digits(&a, &b))
        } else {
            match compare(&a, &b) {
                Ordering::Less => (other.negative, sub_digits(&b, &a)),
                _ => (self.negative, sub_digits(&a, &b)),
            }
        };
        Self {
            negative: negative && digits != "0",
            digits,
            exponent,
        }
    }

    fn negated(&self) -> Self {
        Self {
            negative: !self.negative && !self.is_zero(),
            ..self.clone()
        }
    }

    /// Half a unit of the last digit written: the precision's half width.
    fn half_unit(&self) -> Self {
        Self {
            negative: false,
            digits: "5".into(),
            exponent: self.exponent - 1,
        }
    }

    /// The range the value's precision implies: `100` is [99.5, 100.5), `100.00` is
    /// [99.995, 100.005).
    pub fn precision_range(&self) -> (Self, Self) {
        let half = self.half_unit();
        (self.add(&half.negated()), self.add(&half))
    }

    /// R4's `ap`: within 10% of the value (and never narrower than its precision).
    pub fn approximate_range(&self) -> (Self, Self) {
        if self.is_zero() {
            return self.precision_range();
        }
        let tenth = Self {
            negative: false,
            digits: self.digits.clone(),
            exponent: self.exponent - 1,
        };
        let (lo, hi) = (self.add(&tenth.negated()), self.add(&tenth));
        let (plo, phi) = self.precision_range();
        let lower = if compare_keys(&plo.key(), &lo.key()) == Ordering::Less {
            plo
        } else {
            lo
        };
        let upper = if compare_keys(&phi.key(), &hi.key()) == Ordering::Greater {
            phi
        } else {
            hi
        };
        (lower, upper)
    }

    /// A text whose byte order is the numbers' order: `1` for zero; positive numbers
    /// `2`, the position of the first significant digit (offset, seven digits), then the
    /// significant digits; negative ones `0`, then the same with every digit complemented
    /// and a `~` ending (so a longer negative, being smaller, sorts first).
    pub fn key(&self) -> String {
        if self.is_zero() {
            return "1".to_owned();
        }
        let significant = self.digits.trim_end_matches('0');
        let dropped = (self.digits.len() - significant.len()) as i64;
        let position = significant.len() as i64 + self.exponent + dropped + OFFSET;
        if self.negative {
            let complement: String = significant
                .bytes()
                .map(|b| char::from(b'9' - (b - b'0')))
                .collect();
            format!("0{:07}{complement}~", 2 * OFFSET - 1 - position)
        } else {
            format!("2{position:07}{significant}")
        }
    }
}

fn compare_keys(a: &str, b: &str) -> Ordering {
    a.as_bytes().cmp(b.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::parse(text).unwrap_or_else(|| panic!("{text}"))
    }

    #[test]
    fn keys_order_as_the_numbers_do() {
        let ascending = [
            "-1.000000000000000000E+245",
            "-1000",
            "-100.5",
            "-100",
            "-99.5",
            "-0.55",
            "-0.5",
            "-1E-22",
            "0",
            "1.000000000000000000E-245",
            "1E-22",
            "0.5",
            "0.55",
            "1",
            "1.0000000000000000001",
            "66.899999999999991",
            "66.9",
            "99.5",
            "100",
            "100.5",
            "1000000000000000000",
            "1e19",
        ];
        for pair in ascending.windows(2) {
            let (a, b) = (d(pair[0]).key(), d(pair[1]).key());
            assert!(a < b, "{} ({a}) < {} ({b})", pair[0], pair[1]);
        }
        // Equal numbers written differently have one key.
        for same in [
            ["1", "1.0"],
            ["1.00", "1E0"],
            ["100", "1e2"],
            ["-0", "0.000"],
        ] {
            assert_eq!(d(same[0]).key(), d(same[1]).key(), "{same:?}");
        }
    }

    #[test]
    fn the_precision_written_is_the_range_searched() {
        let range = |text: &str| {
            let (lo, hi) = d(text).precision_range();
            (lo.key(), hi.key())
        };
        assert_eq!(range("100"), (d("99.5").key(), d("100.5").key()));
        assert_eq!(range("100.00"), (d("99.995").key(), d("100.005").key()));
        // One significant digit: half of 1e2 either side. (R4's table says 95 to 105
        // for `1e2`, which is not what one significant digit means; this follows the
        // rule the same table states for `100`.)
        assert_eq!(range("1e2"), (d("50").key(), d("150").key()));
        assert_eq!(range("-5.4"), (d("-5.45").key(), d("-5.35").key()));
        assert_eq!(range("0"), (d("-0.5").key(), d("0.5").key()));
        let (lo, hi) = d("100").approximate_range();
        assert_eq!((lo.key(), hi.key()), (d("90").key(), d("110").key()));
    }

    #[test]
    fn only_json_numbers_parse() {
        for bad in [
            "",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "abc",
            "1.2.3",
            "1e9999999",
            "0x10",
            "+1",
        ] {
            assert!(Decimal::parse(bad).is_none(), "{bad}");
        }
    }
}
