//! Kubernetes quantities as numbers.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Bytes of a quantity written as an integer with an optional binary or
/// decimal suffix (`10Gi`, `500M`, `1073741824`); None for other forms.
pub fn bytes(quantity: &Quantity) -> Option<u128> {
    let text = quantity.0.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let n: u128 = digits.parse().ok()?;
    let factor: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
}
