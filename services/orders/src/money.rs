//! Money: integer amounts in a currency's minor unit (cents; yen for JPY).
//! Nothing here is ever a float, except the decimal number events carry,
//! made from the integer at the last moment.

use serde::{Deserialize, Serialize};

/// The currencies the service sells in (those the event schemas allow).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Currency {
    /// US dollar.
    Usd,
    /// Euro.
    Eur,
    /// Pound sterling.
    Gbp,
    /// Japanese yen (no minor unit).
    Jpy,
    /// Canadian dollar.
    Cad,
}

impl Currency {
    /// Every currency.
    pub const ALL: [Self; 5] = [Self::Usd, Self::Eur, Self::Gbp, Self::Jpy, Self::Cad];

    /// The ISO 4217 code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Usd => "USD",
            Self::Eur => "EUR",
            Self::Gbp => "GBP",
            Self::Jpy => "JPY",
            Self::Cad => "CAD",
        }
    }

    /// The currency with this ISO 4217 code.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Digits after the decimal point.
    pub fn exponent(self) -> u32 {
        match self {
            Self::Jpy => 0,
            _ => 2,
        }
    }

    /// `amount` minor units as a decimal number of major units, for events
    /// (`1234` USD → `12.34`). The shortest float that prints back as the
    /// same decimal: exact for every amount below 2^53 minor units.
    pub fn major(self, amount: i64) -> f64 {
        amount as f64 / 10f64.powi(self.exponent() as i32)
    }
}

/// `amount × basis_points / 10,000`, rounded half to even (banker's
/// rounding), as tax and percentage discounts are.
pub fn basis_points(amount: i64, basis_points: i64) -> Option<i64> {
    let product = i128::from(amount) * i128::from(basis_points);
    let quotient = product.div_euclid(10_000);
    let remainder = product.rem_euclid(10_000);
    let rounded = match remainder.cmp(&5_000) {
        std::cmp::Ordering::Less => quotient,
        std::cmp::Ordering::Greater => quotient + 1,
        std::cmp::Ordering::Equal if quotient % 2 == 0 => quotient,
        std::cmp::Ordering::Equal => quotient + 1,
    };
    i64::try_from(rounded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basis_points_round_half_to_even() {
        assert_eq!(basis_points(1000, 1900), Some(190));
        assert_eq!(basis_points(25, 5000), Some(12)); // 12.5 → 12
        assert_eq!(basis_points(35, 5000), Some(18)); // 17.5 → 18
        assert_eq!(basis_points(333, 3333), Some(111)); // 110.99
        assert_eq!(basis_points(-25, 5000), Some(-12));
        assert_eq!(basis_points(i64::MAX, 20_000), None);
    }

    #[test]
    fn major_units_print_as_the_decimal() {
        assert_eq!(Currency::Usd.major(1234).to_string(), "12.34");
        assert_eq!(Currency::Usd.major(10).to_string(), "0.1");
        assert_eq!(Currency::Jpy.major(1234).to_string(), "1234");
        assert_eq!(Currency::from_code("EUR"), Some(Currency::Eur));
        assert_eq!(Currency::from_code("eur"), None);
    }
}
