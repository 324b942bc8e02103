//! `kubectl hostwright`: the kubectl plugin. It is this same binary,
//! installed (or linked) as `kubectl-hostwright` on the PATH, where kubectl
//! finds plugins; called by that name it reads its arguments as
//! `hostwright kubectl …`.

pub mod site;
pub mod status;
pub mod store;

use std::ffi::OsString;
use std::path::Path;

/// The name kubectl runs the plugin by.
pub const PLUGIN_NAME: &str = "kubectl-hostwright";
/// The subcommand that holds the plugin's commands.
pub const SUBCOMMAND: &str = "kubectl";

/// The arguments as the command line parser expects them: when the binary
/// was called as the plugin, its commands go under [`SUBCOMMAND`].
pub fn arguments(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let called_as_plugin =
        args.first().and_then(|first| Path::new(first).file_name()).is_some_and(|name| name == PLUGIN_NAME);
    if called_as_plugin {
        args.insert(1, SUBCOMMAND.into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn called_as_the_plugin_the_commands_go_under_kubectl() {
        let args = arguments(["/usr/local/bin/kubectl-hostwright", "site", "shop"].map(OsString::from));
        assert_eq!(strings(&args), ["/usr/local/bin/kubectl-hostwright", "kubectl", "site", "shop"]);
    }

    #[test]
    fn called_by_its_own_name_nothing_changes() {
        let args = arguments(["hostwright", "kubectl", "site", "shop"].map(OsString::from));
        assert_eq!(strings(&args), ["hostwright", "kubectl", "site", "shop"]);
        assert_eq!(strings(&arguments(Vec::new())), Vec::<&str>::new());
    }
}
