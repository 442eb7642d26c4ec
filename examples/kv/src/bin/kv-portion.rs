//! The key-value store's server portion as a program: `dabs node` starts it (the `command`
//! of the application's record) and talks to it over a local socket.

fn main() -> std::process::ExitCode {
    match kv::Options::from_args(std::env::args().skip(1)) {
        Ok(options) => dabs_sdk::process::main(kv::factory_with(options)),
        Err(e) => {
            eprintln!("kv-portion: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
