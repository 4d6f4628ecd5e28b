//! Kubernetes resource quantities (`250m`, `64Mi`, `1.5`, `1e3`, `2G`) as integers, rounded up
//! as upstream's `Quantity.MilliValue()` / `Value()` do.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid quantity `{0}`: expected a number with an optional suffix (m, k, M, G, Ki, Mi, Gi, ...) or exponent"
)]
pub struct QuantityError(pub String);

/// The quantity in thousandths of a unit, rounded up (CPU millicores).
pub fn milli_value(text: &str) -> Result<i64, QuantityError> {
    scaled(text, 1000)
}

/// The quantity in whole units, rounded up (bytes).
pub fn value(text: &str) -> Result<i64, QuantityError> {
    scaled(text, 1)
}

fn scaled(text: &str, scale: i128) -> Result<i64, QuantityError> {
    let invalid = || QuantityError(text.to_owned());
    let trimmed = text.trim();
    let (negative, body) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    let number_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_end);
    if number.is_empty() || number == "." {
        return Err(invalid());
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int_part}{frac_part}");
    let mantissa: i128 = digits.parse().map_err(|_| invalid())?;
    let mut numerator = mantissa * scale;
    let mut denominator: i128 = 10_i128.pow(u32::try_from(frac_part.len()).map_err(|_| invalid())?);
    let (base, exponent): (i128, i32) = match suffix {
        "" => (10, 0),
        "n" => (10, -9),
        "u" => (10, -6),
        "m" => (10, -3),
        "k" => (10, 3),
        "M" => (10, 6),
        "G" => (10, 9),
        "T" => (10, 12),
        "P" => (10, 15),
        "E" => (10, 18),
        "Ki" => (2, 10),
        "Mi" => (2, 20),
        "Gi" => (2, 30),
        "Ti" => (2, 40),
        "Pi" => (2, 50),
        "Ei" => (2, 60),
        exp if exp.starts_with(['e', 'E']) => (10, exp[1..].parse().map_err(|_| invalid())?),
        _ => return Err(invalid()),
    };
    if !(-18..=60).contains(&exponent) {
        return Err(invalid());
    }
    let power = base.pow(exponent.unsigned_abs());
    if exponent >= 0 {
        numerator = numerator.checked_mul(power).ok_or_else(invalid)?;
    } else {
        denominator *= power;
    }
    let rounded_up = (numerator + denominator - 1) / denominator;
    let signed = if negative { -rounded_up } else { rounded_up };
    i64::try_from(signed).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_forms() {
        assert_eq!(milli_value("250m").unwrap(), 250);
        assert_eq!(milli_value("1").unwrap(), 1000);
        assert_eq!(milli_value("1.5").unwrap(), 1500);
        assert_eq!(milli_value("0.0001").unwrap(), 1, "rounded up as upstream");
        assert_eq!(milli_value("100u").unwrap(), 1);
        assert_eq!(value("64Mi").unwrap(), 64 << 20);
        assert_eq!(value("1Gi").unwrap(), 1 << 30);
        assert_eq!(value("2G").unwrap(), 2_000_000_000);
        assert_eq!(value("1e3").unwrap(), 1000);
        assert_eq!(value("1.5Ki").unwrap(), 1536);
        assert_eq!(value("500m").unwrap(), 1);
        for bad in ["", "m", "1x", "1.2.3", "Mi", "1e", "--1"] {
            assert!(value(bad).is_err(), "{bad}");
        }
        assert_eq!(
            value("1x").unwrap_err().to_string(),
            "invalid quantity `1x`: expected a number with an optional suffix (m, k, M, G, Ki, Mi, Gi, ...) or exponent"
        );
    }
}
