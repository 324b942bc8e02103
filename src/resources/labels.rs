//! The `app.kubernetes.io/*` labels every child carries.

use std::collections::BTreeMap;

/// `app.kubernetes.io/managed-by` value of every child.
pub const MANAGED_BY: &str = "hostwright";

/// Labels that select one owner's pods. Stable for the owner's lifetime:
/// a Deployment's selector cannot change.
pub fn selector(kind: &str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), kind.to_string()),
        ("app.kubernetes.io/instance".to_string(), instance.to_string()),
    ])
}

/// Selector labels plus the component and the manager.
pub fn common(kind: &str, instance: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector(kind, instance);
    labels.insert("app.kubernetes.io/component".into(), component.into());
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    labels.insert("app.kubernetes.io/part-of".into(), "hostwright".into());
    labels
}

/// `k=v,k=v` form of a selector, as the scale subresource and HPAs read it.
pub fn selector_string(selector: &BTreeMap<String, String>) -> String {
    selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}
