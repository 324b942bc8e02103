//! The checked-in CRD YAML is exactly what the Rust types generate.

use std::path::Path;

#[test]
fn checked_in_crds_match_the_rust_types() {
    let want = hostwright::api::crds_yaml().expect("CRDs serialize");
    for path in
        ["crds/hostwright.yaml", "charts/hostwright/crds/hostwright.yaml", "manifests/install/crds.yaml"]
    {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        // Generated copies may start with a comment saying so.
        let got: String = text.lines().skip_while(|l| l.starts_with('#')).map(|l| format!("{l}\n")).collect();
        assert!(
            got == want,
            "{path} has drifted from the Rust types in src/api; regenerate it with `make crds`"
        );
    }
}
