// The binary's entry point is C's `main`, not std's: std's start-up reads /proc/self/maps to
// find the main thread's stack (an sscanf per line), which costs a one-shot `sign-input` more
// than its round trip to the agent (docs/performance.md). What the program needs of that
// start-up is done here: fds 0-2 open, SIGPIPE ignored. Arguments and the environment come
// from the C runtime as usual.
#![cfg_attr(not(test), no_main)]

// Freed memory is zeroed: secrets pass through buffers the crate does not own (see `memory`).
#[global_allocator]
static ALLOCATOR: jwt_agent::ZeroOnFree = jwt_agent::ZeroOnFree;

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    jwt_agent::start_up();
    libc::c_int::from(jwt_agent::run())
}
