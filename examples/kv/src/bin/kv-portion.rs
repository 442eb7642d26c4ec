//! The key-value store's server portion as a program: `dabs node` starts it (the `command`
//! of the application's record) and talks to it over a local socket.

fn main() -> std::process::ExitCode {
    use clap::Parser;
    match kv::factory_with(kv::Options::parse()) {
        Ok(factory) => dabs_sdk::process::main(factory),
        Err(e) => {
            eprintln!("kv-portion: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
