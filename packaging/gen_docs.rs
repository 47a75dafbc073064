//! Man pages and bash/zsh completions from a binary's clap definition.
//!
//! Each binary includes this file with `#[path]` and runs it for its
//! packaging-only `gen-docs DIR` subcommand, which `packaging/build.sh`
//! calls on the binary it packages: the pages and completions always match
//! the shipped flags.

use std::path::Path;
use std::process::ExitCode;

/// Writes into `dir`: `NAME.1` and one `NAME-SUB.1` per subcommand (nested
/// ones too), `NAME.bash` and `_NAME` (zsh).
pub fn write(mut cmd: clap::Command, dir: &Path) -> ExitCode {
    let name = cmd.get_name().to_string();
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| clap_mangen::generate_to(cmd.clone(), dir))
        .and_then(|()| {
            for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
                clap_complete::generate_to(shell, &mut cmd, &name, dir)?;
            }
            Ok(())
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
