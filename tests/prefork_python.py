"""`python`, run by the tests' warm fork server (tests/prefork.py), else by the real interpreter.

tests/prefork.py writes this file as `python` with a first line that runs it in the real interpreter,
isolated and without site (a start-up of some 20 ms). It sends the server its argv, working directory,
environment and open descriptors, forwards the signals it gets to the script's process, and exits
with the script's status, or is killed by the same signal.
"""

import json
import os
import signal
import socket
import sys


def run_real_interpreter() -> None:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])


def open_fds() -> list[int]:
    listed = [int(name) for name in os.listdir("/proc/self/fd")]
    return [fd for fd in listed if _is_open(fd)]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def main() -> None:
    address = os.environ.get("LLM_TUNING_PREFORK_SOCKET")
    if not address or len(sys.argv) < 2:
        run_real_interpreter()
    fds = open_fds()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.connect(address)
    except OSError:
        run_real_interpreter()
    request = json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ), "fds": fds,
                          "executable": os.path.abspath(sys.argv[0])}).encode()
    socket.send_fds(server, [len(request).to_bytes(8, "big") + request], fds)
    replies = server.makefile("rb")
    kind, _, value = replies.readline().decode().partition(" ")
    if kind != "pid":
        server.close()
        run_real_interpreter()
    pid = int(value)

    def forward(sig, _frame):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    kind, _, value = replies.readline().decode().partition(" ")
    if kind != "exit":
        sys.stderr.write("python (tests/prefork_python.py): the fork server went away\n")
        os._exit(1)
    status = int(value)
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status)


main()
