//! The key-value store's server portion as a program: `dabs node` starts it (the `command`
//! of the application's record) and talks to it over a local socket.

fn main() -> std::process::ExitCode {
    dabs_sdk::process::main(kv::factory())
}
