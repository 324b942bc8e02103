//! "Is what we would apply already there?" — so a reconcile with nothing to
//! change sends nothing, not even a no-op server-side apply.
//!
//! The desired object holds only the fields the operator sets; the live object
//! also carries defaults, status and other managers' fields. The desired
//! object is applied when any of its fields differs from the live one.

use serde_json::Value;

/// True when every field set in `desired` has the same value in `live`.
/// Objects compare key by key (extra keys in `live` are fine), lists element
/// by element with equal length, scalars by equality.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    first_difference(desired, live).is_none()
}

/// The path of the first field of `desired` that `live` lacks or holds
/// differently (e.g. `spec.template.spec.containers[0].image`), for logs that
/// say why a write was needed.
pub fn first_difference(desired: &Value, live: &Value) -> Option<String> {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().find_map(|(k, dv)| match l.get(k) {
            Some(lv) => first_difference(dv, lv).map(|p| join(k, &p)),
            // An empty object, list or null we set is the same as absent.
            None if is_empty(dv) => None,
            None => Some(k.clone()),
        }),
        (Value::Array(d), Value::Array(l)) if d.len() == l.len() => d
            .iter()
            .zip(l)
            .enumerate()
            .find_map(|(i, (dv, lv))| first_difference(dv, lv).map(|p| join(&format!("[{i}]"), &p))),
        (Value::Number(d), Value::Number(l)) if d.as_f64() == l.as_f64() => None,
        (d, l) if d == l => None,
        _ => Some(String::new()),
    }
}

/// [`first_difference`], and then, at each JSON pointer in `owned`, the
/// fields of `live` must also be in `desired`: there the operator sets the
/// whole value, so a field it stopped setting (a removed TLS block, a
/// narrowed selector) is a difference too. Absent and empty are equal.
pub fn first_difference_owning(desired: &Value, live: &Value, owned: &[&str]) -> Option<String> {
    first_difference(desired, live).or_else(|| {
        owned.iter().find_map(|pointer| {
            let (d, l) = (desired.pointer(pointer), live.pointer(pointer));
            let (d, l) = (d.filter(|v| !is_empty(v)), l.filter(|v| !is_empty(v)));
            let differs = match (d, l) {
                (None, None) => false,
                (Some(d), Some(l)) => first_difference(d, l).is_some() || first_difference(l, d).is_some(),
                _ => true,
            };
            differs.then(|| pointer.trim_start_matches('/').replace('/', ".").replace("~1", "/"))
        })
    })
}

fn join(head: &str, tail: &str) -> String {
    match (tail.is_empty(), tail.starts_with('[')) {
        (true, _) => head.to_string(),
        (false, true) => format!("{head}{tail}"),
        (false, false) => format!("{head}.{tail}"),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(o) => o.values().all(is_empty),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_status_in_the_live_object_do_not_count() {
        let desired = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "web", "image": "a"}]}}}});
        let live = json!({
            "metadata": {"resourceVersion": "7"},
            "spec": {"replicas": 3, "progressDeadlineSeconds": 600,
                     "template": {"spec": {"containers": [{"name": "web", "image": "a", "imagePullPolicy": "IfNotPresent"}]}}},
            "status": {"readyReplicas": 3},
        });
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn a_changed_or_missing_field_is_a_difference() {
        let desired = json!({"spec": {"replicas": 3, "paused": false}});
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 4, "paused": false}})));
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 3}})));
    }

    #[test]
    fn lists_must_match_in_length_and_order() {
        let desired = json!({"hosts": ["a", "b"]});
        assert!(!is_subset(&desired, &json!({"hosts": ["a"]})));
        assert!(!is_subset(&desired, &json!({"hosts": ["b", "a"]})));
        assert!(is_subset(&desired, &json!({"hosts": ["a", "b"]})));
    }

    #[test]
    fn empty_values_we_set_equal_absent_ones() {
        assert!(is_subset(&json!({"metadata": {"annotations": {}}, "x": null}), &json!({"metadata": {}})));
        assert!(!is_subset(&json!({"metadata": {"annotations": {"a": "1"}}}), &json!({"metadata": {}})));
    }

    #[test]
    fn the_first_difference_is_named_by_its_path() {
        let desired = json!({"spec": {"containers": [{"name": "web", "image": "b"}]}});
        let live = json!({"spec": {"containers": [{"name": "web", "image": "a"}]}});
        assert_eq!(first_difference(&desired, &live).as_deref(), Some("spec.containers[0].image"));
        assert_eq!(first_difference(&desired, &desired), None);
    }

    #[test]
    fn a_field_removed_under_an_owned_pointer_is_a_difference() {
        let desired = json!({"spec": {"rules": [1]}});
        let live = json!({"spec": {"rules": [1], "tls": [{"secretName": "a"}]}});
        assert_eq!(first_difference(&desired, &live), None, "a subset check alone misses it");
        assert_eq!(first_difference_owning(&desired, &live, &["/spec/tls"]).as_deref(), Some("spec.tls"));
        assert_eq!(first_difference_owning(&desired, &live, &["/spec/other"]), None);
        // A key dropped inside an owned value counts; extra fields elsewhere do not.
        let narrowed = json!({"spec": {"from": [{"matchLabels": {"a": "1"}}]}});
        let wide = json!({"spec": {"from": [{"matchLabels": {"a": "1", "b": "2"}}]}, "status": {}});
        assert!(first_difference_owning(&narrowed, &wide, &["/spec/from"]).is_some());
        assert_eq!(first_difference_owning(&wide, &wide, &["/spec/from"]), None);
        let annotated = json!({"metadata": {"annotations": {"cert-manager.io/issuer": "x"}}});
        assert_eq!(
            first_difference_owning(
                &json!({}),
                &annotated,
                &["/metadata/annotations/cert-manager.io~1issuer"]
            )
            .as_deref(),
            Some("metadata.annotations.cert-manager.io/issuer")
        );
        assert_eq!(first_difference_owning(&json!({"x": []}), &json!({}), &["/x"]), None);
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(is_subset(&json!({"n": 1}), &json!({"n": 1.0})));
    }
}
