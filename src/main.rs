// Freed memory is zeroed: secrets pass through buffers the crate does not own (see `memory`).
#[global_allocator]
static ALLOCATOR: jwt_agent::ZeroOnFree = jwt_agent::ZeroOnFree;

fn main() -> std::process::ExitCode {
    jwt_agent::main()
}
