//! The operator binary allocates with jemalloc under `hostwright::memory`'s
//! settings: jemalloc reads them from the symbol `src/main.rs` exports, and
//! a misspelled name or an option jemalloc does not know would leave it on
//! its defaults without a word. Its own statistics, printed at exit, say
//! what it ran with.

use std::process::Command;

#[test]
fn the_operator_runs_on_jemalloc_with_the_settings_in_memory_rs() {
    let out = Command::new(env!("CARGO_BIN_EXE_hostwright"))
        .arg("version")
        // The prefixed build's environment variable; added to, not instead of,
        // the compiled-in settings.
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("the hostwright binary runs");
    assert!(out.status.success(), "{out:?}");
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(!stats.contains("<jemalloc>: Invalid conf"), "jemalloc refused a setting:\n{stats}");
    let conf = hostwright::memory::MALLOC_CONF.to_str().expect("ASCII");
    for setting in conf.split(',') {
        let (key, value) = setting.split_once(':').expect("key:value");
        let line = format!("opt.{key}: {value}");
        assert!(stats.lines().any(|l| l.trim_start().starts_with(&line)), "no `{line}` in:\n{stats}");
    }
}
