//! Object names that stay valid in every child they become.
//!
//! Each kind's name is the stem of its children's names (`<name>-rw`,
//! `<name>-credentials`, …) and the `app.kubernetes.io/instance` label
//! value. Services need DNS-1035 labels (a letter first) and label values
//! and Service names at most 63 characters, while the API server accepts
//! any DNS subdomain (253 characters, a digit first) as a custom object's
//! name. Without a rule of its own such an object is accepted and then
//! fails at its first child, far from the user. Each kind refuses, at
//! creation, a name whose longest child name would not fit.

use kube::core::{Message, Rule};

/// Longest DNS label, and so longest Service name and label value.
pub const DNS_LABEL_MAX: usize = 63;

/// A DNS-1035 label, as Kubernetes checks Service names (before length).
pub const DNS1035_PATTERN: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";

/// The longest name a kind may have when `longest_suffix` is the longest
/// suffix its builders append to the name.
pub const fn max_name_length(longest_suffix: &str) -> usize {
    DNS_LABEL_MAX - longest_suffix.len()
}

/// The root-level CEL rule that holds `metadata.name` to a DNS-1035 label
/// of at most `max_length` characters. `longest_child` names the child
/// that sets the limit, so the user sees why it is below 63.
pub fn name_rule(kind: &str, max_length: usize, longest_child: &str) -> Rule {
    Rule::new(format!(
        "self.metadata.name.matches('{DNS1035_PATTERN}') && size(self.metadata.name) <= {max_length}"
    ))
    .message(Message::Message(format!(
        "metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter \
         and ending with a letter or digit) of at most {max_length} characters, so that every object a {kind} \
         creates stays within the {DNS_LABEL_MAX}-character limit of Kubernetes names and labels (the longest \
         is {longest_child})"
    )))
}

/// What [`name_rule`] enforces, in Rust, for tests and messages.
pub fn is_allowed_name(name: &str, max_length: usize) -> bool {
    name.len() <= max_length && is_dns1035_label(name)
}

/// Lower-case letters, digits and `-`, a letter first, no `-` last, at most
/// 63 characters: what a Service name must be.
pub fn is_dns1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= DNS_LABEL_MAX
                && first.is_ascii_lowercase()
                && (last.is_ascii_lowercase() || last.is_ascii_digit())
                && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        }
        _ => false,
    }
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_` and `.`,
/// alphanumeric at both ends.
pub fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    let inner = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    match (bytes.first(), bytes.last()) {
        (None, None) => true,
        (Some(first), Some(last)) => {
            bytes.len() <= DNS_LABEL_MAX
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes.iter().all(inner)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1035_labels_start_with_a_letter_and_fit_63_characters() {
        for ok in ["a", "shop", "shop-db", "a1", &"a".repeat(63)] {
            assert!(is_dns1035_label(ok), "{ok}");
        }
        for bad in ["", "1shop", "shop-", "-shop", "Shop", "shop.db", "shop_db", &"a".repeat(64)] {
            assert!(!is_dns1035_label(bad), "{bad}");
        }
    }

    #[test]
    fn label_values_may_be_empty_but_not_longer_than_63() {
        for ok in ["", "a", "shop-db_1.x", &"a".repeat(63)] {
            assert!(is_label_value(ok), "{ok}");
        }
        for bad in ["-a", "a-", "a b", &"a".repeat(64)] {
            assert!(!is_label_value(bad), "{bad}");
        }
    }

    #[test]
    fn the_rule_states_the_limit_it_checks() {
        let rule = name_rule("Thing", 51, "the Secret <name>-credentials");
        assert!(rule.rule.ends_with("size(self.metadata.name) <= 51"), "{}", rule.rule);
        assert!(rule.rule.contains(DNS1035_PATTERN));
        let Some(Message::Message(message)) = rule.message else { panic!("a static message") };
        assert!(message.contains("at most 51 characters"), "{message}");
        assert!(is_allowed_name(&"a".repeat(51), 51));
        assert!(!is_allowed_name(&"a".repeat(52), 51));
        assert!(!is_allowed_name("9lives", 51));
    }

    #[test]
    fn the_limit_leaves_room_for_the_longest_suffix() {
        assert_eq!(max_name_length("-credentials"), 51);
        assert_eq!(max_name_length(""), 63);
    }
}
