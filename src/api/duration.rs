//! [`GoDuration`]: a Go `time.Duration` string (`1h30m`, `1.5s`, `500ms`)
//! read with checked integer arithmetic.
//!
//! Not `kube::core::Duration`: its parser multiplies with `f64` and adds with
//! `+=`, both of which panic on overflow, so one object with
//! `99999999999999999999h` panicked the operator while it deserialised the
//! list of every tenant's objects. Here every input either parses to a value
//! within Go's range or is an ordinary error.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

const NANOS_PER_MICRO: u64 = 1_000;
const NANOS_PER_MILLI: u64 = 1_000_000;
const NANOS_PER_SECOND: u64 = 1_000_000_000;
const NANOS_PER_MINUTE: u64 = 60 * NANOS_PER_SECOND;
const NANOS_PER_HOUR: u64 = 60 * NANOS_PER_MINUTE;

/// Go's largest duration (`i64::MAX` nanoseconds, 2562047h47m16.854775807s).
/// Nothing larger parses, so the API server's CEL `duration()` (Go) and this
/// type agree on what is a duration.
const MAX_NANOS: u64 = i64::MAX as u64;

/// Fraction digits that can matter: 19 keep `digits * unit` within `u128`
/// and go below a nanosecond even for hours.
const MAX_FRACTION_DIGITS: usize = 19;

/// How much of a refused input an error repeats, so a huge string does not
/// become a huge log line or status message.
const MAX_QUOTED_INPUT: usize = 64;

/// A non-negative duration written in Go's `time.ParseDuration` syntax, at
/// most Go's maximum. Serialises back in Go's canonical `String()` form
/// (`90s` reads back as `1m30s`), which CEL's `duration()` also reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration {
    nanos: u64,
}

impl GoDuration {
    /// Regex of the schema: one or more `<number><unit>` with a plain decimal
    /// number. Stricter than Go (no sign, no bare `0`, no `.5s`) so that what
    /// users write stays readable; the parser accepts all of Go's syntax.
    pub const PATTERN: &'static str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";
    /// `maxLength` of the schema: room for any sensible spelling (e.g.
    /// `59m59.999999999s`, `3599999999999ns`) with margin, and a small bound
    /// on what the API server's regex and CEL rules have to look at.
    pub const MAX_LENGTH: u32 = 32;
    /// The longest duration that parses (Go's maximum).
    pub const MAX: GoDuration = GoDuration { nanos: MAX_NANOS };
    /// No time at all.
    pub const ZERO: GoDuration = GoDuration { nanos: 0 };

    /// `secs` seconds; a `u32` of seconds always fits Go's range.
    pub const fn from_secs(secs: u32) -> Self {
        Self { nanos: secs as u64 * NANOS_PER_SECOND }
    }

    /// `millis` milliseconds; a `u32` of milliseconds always fits Go's range.
    pub const fn from_millis(millis: u32) -> Self {
        Self { nanos: millis as u64 * NANOS_PER_MILLI }
    }

    /// The duration in nanoseconds (at most `i64::MAX`).
    pub const fn as_nanos(self) -> u64 {
        self.nanos
    }

    /// The duration for timers and arithmetic in the controllers.
    pub const fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.nanos)
    }
}

impl From<GoDuration> for std::time::Duration {
    fn from(d: GoDuration) -> Self {
        d.as_std()
    }
}

impl TryFrom<std::time::Duration> for GoDuration {
    type Error = ParseDurationError;

    /// Fails above Go's maximum (about 292 years).
    fn try_from(d: std::time::Duration) -> Result<Self, Self::Error> {
        match u64::try_from(d.as_nanos()) {
            Ok(nanos) if nanos <= MAX_NANOS => Ok(Self { nanos }),
            _ => Err(ParseDurationError::new(&format!("{d:?}"), Reason::TooLarge)),
        }
    }
}

/// Why a string is not a duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("it is empty (write e.g. 5s or 1m30s)")]
    Empty,
    #[error("negative durations are not allowed")]
    Negative,
    #[error("expected a number at byte {0}")]
    ExpectedNumber(usize),
    #[error("a number at byte {0} has no unit (one of ns, us, µs, ms, s, m, h)")]
    MissingUnit(usize),
    #[error("the unit at byte {0} is not one of ns, us, µs, ms, s, m, h")]
    UnknownUnit(usize),
    #[error("it is longer than the largest duration, 2562047h47m16.854775807s")]
    TooLarge,
}

/// A string that is not a duration, quoted (shortened if long) with the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct ParseDurationError {
    input: String,
    reason: Reason,
}

impl ParseDurationError {
    fn new(input: &str, reason: Reason) -> Self {
        let mut quoted: String = input.chars().take(MAX_QUOTED_INPUT).collect();
        if quoted.len() < input.len() {
            quoted.push('…');
        }
        Self { input: quoted, reason }
    }

    /// What was wrong with the input.
    pub fn reason(&self) -> Reason {
        self.reason
    }
}

impl FromStr for GoDuration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_nanos(s).map(|nanos| Self { nanos }).map_err(|reason| ParseDurationError::new(s, reason))
    }
}

/// Go's `time.ParseDuration` without the sign, in checked integer arithmetic.
fn parse_nanos(s: &str) -> Result<u64, Reason> {
    if s.is_empty() {
        return Err(Reason::Empty);
    }
    if s.starts_with('-') {
        return Err(Reason::Negative);
    }
    let unsigned = s.strip_prefix('+').unwrap_or(s);
    if unsigned == "0" {
        return Ok(0);
    }
    if unsigned.is_empty() {
        return Err(Reason::ExpectedNumber(s.len()));
    }
    let mut rest = unsigned;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let at = s.len() - rest.len();
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        let (frac_digits, after_number) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                after_dot.split_at(frac_len)
            }
            None => ("", after_int),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(Reason::ExpectedNumber(at));
        }
        let unit_at = s.len() - after_number.len();
        let unit_len =
            after_number.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_len);
        let unit_nanos = match unit {
            "" => return Err(Reason::MissingUnit(at)),
            "ns" => 1,
            // U+00B5 micro sign and U+03BC Greek mu, as Go accepts both.
            "us" | "\u{b5}s" | "\u{3bc}s" => NANOS_PER_MICRO,
            "ms" => NANOS_PER_MILLI,
            "s" => NANOS_PER_SECOND,
            "m" => NANOS_PER_MINUTE,
            "h" => NANOS_PER_HOUR,
            _ => return Err(Reason::UnknownUnit(unit_at)),
        };
        let whole = digits_value(int_digits)?.checked_mul(unit_nanos).ok_or(Reason::TooLarge)?;
        let part = whole.checked_add(fraction_nanos(frac_digits, unit_nanos)).ok_or(Reason::TooLarge)?;
        total = total.checked_add(part).filter(|t| *t <= MAX_NANOS).ok_or(Reason::TooLarge)?;
        rest = after_unit;
    }
    Ok(total)
}

/// The value of a run of ASCII digits, or `TooLarge`.
fn digits_value(digits: &str) -> Result<u64, Reason> {
    digits.bytes().try_fold(0u64, |acc, d| {
        acc.checked_mul(10).and_then(|a| a.checked_add(u64::from(d - b'0'))).ok_or(Reason::TooLarge)
    })
}

/// `0.<digits>` of `unit_nanos`, truncated to whole nanoseconds. Digits past
/// the 19th are below a nanosecond and ignored (as Go does).
fn fraction_nanos(digits: &str, unit_nanos: u64) -> u64 {
    let digits = &digits.as_bytes()[..digits.len().min(MAX_FRACTION_DIGITS)];
    let (value, scale) = digits
        .iter()
        .fold((0u128, 1u128), |(value, scale), d| (value * 10 + u128::from(d - b'0'), scale * 10));
    // value < scale, so the result is below unit_nanos and fits u64.
    u64::try_from(value * u128::from(unit_nanos) / scale).unwrap_or(unit_nanos)
}

impl fmt::Display for GoDuration {
    /// Go's `Duration.String()`: `0s`, `1.5µs`, `500ms`, `5s`, `1m30s`, `1h0m0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.nanos;
        if n == 0 {
            return f.write_str("0s");
        }
        if n < NANOS_PER_SECOND {
            let (unit, per) = match n {
                _ if n < NANOS_PER_MICRO => ("ns", 1),
                _ if n < NANOS_PER_MILLI => ("µs", NANOS_PER_MICRO),
                _ => ("ms", NANOS_PER_MILLI),
            };
            return write!(f, "{}{}{unit}", n / per, Fraction(n % per, per));
        }
        let (hours, minutes) = (n / NANOS_PER_HOUR, n / NANOS_PER_MINUTE % 60);
        let (seconds, fraction) = (n / NANOS_PER_SECOND % 60, n % NANOS_PER_SECOND);
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if hours > 0 || minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        write!(f, "{seconds}{}s", Fraction(fraction, NANOS_PER_SECOND))
    }
}

/// `.5` for 5 of 10, `.25` for 25 of 100, nothing for 0: a decimal fraction
/// without trailing zeros.
struct Fraction(u64, u64);

impl fmt::Display for Fraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Fraction(value, per) = *self;
        if value == 0 {
            return Ok(());
        }
        let width = per.ilog10() as usize;
        let digits = format!("{value:0width$}");
        write!(f, ".{}", digits.trim_end_matches('0'))
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = GoDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Go duration string such as 5s or 1m30s")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<GoDuration, E> {
                value.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Not `format: duration`: that is ISO 8601 (`PT5S`), not Go's syntax.
        schemars::json_schema!({
            "type": "string",
            "maxLength": Self::MAX_LENGTH,
            "pattern": Self::PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nanos(s: &str) -> Result<u64, Reason> {
        s.parse::<GoDuration>().map(GoDuration::as_nanos).map_err(|e| e.reason())
    }

    #[test]
    fn go_syntax_parses_to_exact_nanoseconds() {
        let cases = [
            ("5s", 5 * NANOS_PER_SECOND),
            ("1h30m", 90 * NANOS_PER_MINUTE),
            ("1.5s", 1_500_000_000),
            ("500ms", 500_000_000),
            ("10us", 10_000),
            ("10µs", 10_000),
            ("10\u{3bc}s", 10_000),
            ("7ns", 7),
            ("1h1h", 2 * NANOS_PER_HOUR),
            ("0", 0),
            ("+0", 0),
            ("0s", 0),
            (".5s", 500_000_000),
            ("1.s", NANOS_PER_SECOND),
            ("0.000000001s", 1),
            ("0.0000000009s", 0),
            ("1.0000000000000000000000001h", NANOS_PER_HOUR),
            ("2562047h47m16.854775807s", MAX_NANOS),
            ("9223372036854775807ns", MAX_NANOS),
        ];
        for (text, want) in cases {
            assert_eq!(nanos(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn anything_else_is_an_error_with_a_reason_never_a_panic() {
        let cases = [
            ("", Reason::Empty),
            ("-1s", Reason::Negative),
            ("-0", Reason::Negative),
            ("+", Reason::ExpectedNumber(1)),
            ("5", Reason::MissingUnit(0)),
            ("1h5", Reason::MissingUnit(2)),
            ("soon", Reason::ExpectedNumber(0)),
            ("5 s", Reason::UnknownUnit(1)),
            ("5sec", Reason::UnknownUnit(1)),
            ("1e309s", Reason::UnknownUnit(1)),
            ("s", Reason::ExpectedNumber(0)),
            (".s", Reason::ExpectedNumber(0)),
            ("99999999999999999999h", Reason::TooLarge),
            ("9223372036854775807h", Reason::TooLarge),
            ("9223372036854775808ns", Reason::TooLarge),
            ("2562047h47m16.854775808s", Reason::TooLarge),
            ("2562048h", Reason::TooLarge),
            ("18446744073709551616ns", Reason::TooLarge),
        ];
        for (text, want) in cases {
            assert_eq!(nanos(text), Err(want), "{text}");
        }
    }

    #[test]
    fn many_garbage_and_huge_strings_are_refused_or_parsed_without_panicking() {
        let huge_digits = "9".repeat(10_000);
        let mut inputs: Vec<String> = [
            "99999999999999999999h",
            "1e309s",
            "9223372036854775807h",
            "",
            "-1s",
            "NaN",
            "nans",
            "infh",
            "1.7976931348623157e308h",
            "0x10s",
            "1__0s",
            "1..5s",
            "1.5.5s",
            "\u{0}",
            "5s\n",
            "1h\u{3bc}",
            "µ",
            "µs",
            "1µ",
            "🦀s",
            "1🦀",
            "1ms1",
            "..",
            "h",
            "1h-1h",
            "1h+1h",
            "0.5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        inputs.push(format!("{huge_digits}h"));
        inputs.push(format!("1.{huge_digits}h"));
        inputs.push(format!("0.{huge_digits}ns"));
        inputs.push("1h".repeat(2_600_000 / 1_000));
        inputs.push("2562047h".repeat(2));
        inputs.push("1ns".repeat(10_000));
        for unit in ["ns", "us", "ms", "s", "m", "h"] {
            inputs.push(format!("{}{unit}", u64::MAX));
            inputs.push(format!("{}{unit}", i64::MAX));
            inputs.push(format!("{}.{}{unit}", u64::MAX, u64::MAX));
        }
        for input in &inputs {
            match input.parse::<GoDuration>() {
                Ok(d) => assert!(d <= GoDuration::MAX, "{input:?}"),
                Err(e) => assert!(e.to_string().len() < 300, "the error stays short for {input:?}"),
            }
        }
        assert_eq!(nanos(&"1ns".repeat(10_000)), Ok(10_000));
        assert_eq!(nanos(&format!("0.{huge_digits}ns")), Ok(0));
    }

    #[test]
    fn it_serialises_to_gos_canonical_form() {
        let cases = [
            ("0", "0s"),
            ("5s", "5s"),
            ("90s", "1m30s"),
            ("1h", "1h0m0s"),
            ("1h30m", "1h30m0s"),
            ("1.5s", "1.5s"),
            ("1500ms", "1.5s"),
            ("500ms", "500ms"),
            ("1.5ms", "1.5ms"),
            ("1500ns", "1.5µs"),
            ("7ns", "7ns"),
            ("61.000000001s", "1m1.000000001s"),
            ("9223372036854775807ns", "2562047h47m16.854775807s"),
        ];
        for (text, canonical) in cases {
            let d: GoDuration = text.parse().unwrap();
            assert_eq!(d.to_string(), canonical, "{text}");
            assert_eq!(serde_json::to_value(d).unwrap(), canonical);
        }
    }

    #[test]
    fn deserialisation_failures_are_serde_errors() {
        let ok: GoDuration = serde_json::from_str("\"1m30s\"").unwrap();
        assert_eq!(ok.as_std(), std::time::Duration::from_secs(90));
        let huge = serde_json::from_str::<GoDuration>("\"99999999999999999999h\"").unwrap_err();
        assert!(huge.to_string().contains("longer than the largest duration"), "{huge}");
        let negative = serde_yaml::from_str::<GoDuration>("-1s").unwrap_err();
        assert!(negative.to_string().contains("negative"), "{negative}");
        assert!(serde_json::from_str::<GoDuration>("5").is_err(), "a number is not a duration");
    }

    #[test]
    fn conversions_to_and_from_std_keep_the_value() {
        let d = GoDuration::from_secs(5);
        assert_eq!(std::time::Duration::from(d), std::time::Duration::from_secs(5));
        assert_eq!(GoDuration::try_from(std::time::Duration::from_millis(1500)), Ok("1.5s".parse().unwrap()));
        assert!(GoDuration::try_from(std::time::Duration::MAX).is_err());
        assert_eq!(GoDuration::from_secs(u32::MAX).as_nanos(), u64::from(u32::MAX) * NANOS_PER_SECOND);
        assert_eq!(GoDuration::from_millis(250).to_string(), "250ms");
    }

    #[test]
    fn the_schema_is_a_bounded_string_with_the_pattern() {
        let schema = schemars::schema_for!(GoDuration);
        let json = serde_json::to_value(&schema).unwrap();
        assert_eq!(json["type"], "string");
        assert_eq!(json["maxLength"], GoDuration::MAX_LENGTH);
        assert_eq!(json["pattern"], GoDuration::PATTERN);
        let canonical_max = GoDuration::MAX.to_string();
        assert!(canonical_max.chars().count() <= GoDuration::MAX_LENGTH as usize);
    }

    proptest! {
        #[test]
        fn any_string_parses_or_fails_without_panicking(s in "\\PC{0,40}") {
            let _ = s.parse::<GoDuration>();
        }

        #[test]
        fn any_duration_in_syntax_parses_or_fails_without_panicking(
            s in "[+-]?([0-9]{0,25}(\\.[0-9]{0,25})?(ns|us|µs|ms|s|m|h|x)?){1,4}"
        ) {
            if let Ok(d) = s.parse::<GoDuration>() {
                prop_assert!(d <= GoDuration::MAX);
            }
        }

        #[test]
        fn the_canonical_form_reads_back_as_the_same_duration(n in 0..=MAX_NANOS) {
            let d = GoDuration { nanos: n };
            let text = d.to_string();
            prop_assert_eq!(text.parse::<GoDuration>(), Ok(d));
            prop_assert!(text.chars().count() <= GoDuration::MAX_LENGTH as usize);
        }
    }
}
