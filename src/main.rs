//! The `imprint` command. It lives in the library's `cli` module (feature
//! `cli`, on by default), so that this file is only its entry point.

fn main() -> std::process::ExitCode {
    imprint::cli::main()
}
