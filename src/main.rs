use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = latchkey::cli::Cli::parse();
    latchkey::cli::init_tracing();
    match latchkey::cli::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, every cause joined: what a shell user or systemd's journal needs.
            let reason = format!("{e:#}");
            eprintln!(
                "latchkey: {}",
                reason.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            std::process::ExitCode::FAILURE
        }
    }
}
