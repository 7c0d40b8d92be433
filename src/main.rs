fn main() -> std::process::ExitCode {
    jwt_agent::cli::main()
}
