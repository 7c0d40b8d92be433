#!/usr/bin/env python3
"""Runs a command on a pseudo-terminal with echo off and types what comes on stdin at its prompts.

For tools that read a PIN only from the terminal or from their command line (`softhsm2-util
--init-token`), so that a script can give it without putting it where `ps` shows it:

    { cat so-pin; echo; cat so-pin; echo; cat pin; echo; cat pin; echo; } |
        python3 scripts/at_prompts.py softhsm2-util --init-token --free --label demo

The command's output goes to stderr; its exit status is this script's.
"""
import fcntl
import os
import pty
import subprocess
import sys
import termios


def main(argv):
    if len(argv) < 2:
        sys.exit("usage: at_prompts.py COMMAND [ARG...] <answers")
    answers = sys.stdin.buffer.read()
    tty, child = pty.openpty()
    # The terminal echoes nothing, before anything is typed: the answers never show on its output.
    attrs = termios.tcgetattr(child)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(child, termios.TCSANOW, attrs)
    try:
        proc = subprocess.Popen(argv[1:], stdin=child, stdout=child, stderr=child, start_new_session=True,
                                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    except OSError as e:
        sys.exit(f"at_prompts.py: {argv[1]}: {e.strerror}")
    os.close(child)
    os.write(tty, answers)
    del answers
    while True:
        try:
            chunk = os.read(tty, 4096)
        except OSError:  # EIO: the command has closed the terminal
            break
        if not chunk:
            break
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
