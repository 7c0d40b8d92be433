//! What keeps other processes of the daemon's uid out of its memory, where the PIN and, during
//! an import, a private key pass: no core dumps, no ptrace, no `/proc/PID/mem` or `environ`.

/// Makes this process non-dumpable and non-traceable, with no core files, before it reads a
/// PIN. Failures are warnings: the daemon still works, with less protection.
pub fn process() {
    let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: setrlimit reads the struct it is given, nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) } != 0 {
        crate::warn!("cannot turn core dumps off: {}", std::io::Error::last_os_error());
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_DUMPABLE takes an integer argument and touches no memory. A non-dumpable
    // process cannot be ptrace-attached or have /proc/PID/mem, environ or a core read by its uid.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        crate::warn!("cannot make the daemon non-dumpable: {}", std::io::Error::last_os_error());
    }
    #[cfg(target_os = "macos")]
    // SAFETY: PT_DENY_ATTACH takes no address or data; it makes later ptrace attaches fail.
    if unsafe { libc::ptrace(libc::PT_DENY_ATTACH, 0, std::ptr::null_mut(), 0) } != 0 {
        crate::warn!("cannot deny debuggers: {}", std::io::Error::last_os_error());
    }
    // An audit log that reaches a file size limit fails its writes (and the agent fails closed)
    // instead of killing the daemon with SIGXFSZ.
    // SAFETY: SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}
