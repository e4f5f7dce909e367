"""A warm `python` for the scripts the tests start: the heavy imports are paid once per worker.

A script the tests run as a user would (`python chat.py ...`, `sh train.sh`, every README command)
spends 4-5 of its 6-7 CPU-seconds of start-up importing torch and what peft pulls in with it:
bitsandbytes, which calls `torch.compile` at import and so loads torch's inductor. This module is a
fork server: it imports those once, then forks a copy of itself to run each script with the caller's
argv, working directory, environment and open file descriptors, and reports the exit status back.

`tests/prefork_python.py` is the client: the tests put it first on PATH as `python` (and it is the
`sys.executable` of the scripts it runs, so what they start runs warm too). What it cannot run the way
`python` would (`-c`, other options, a REPL, an environment that changes a start-up setting of the
preloaded libraries, or no server) it hands to the real interpreter with `exec`.

Only libraries that read no per-test setting at import are preloaded: transformers, peft, datasets and
huggingface_hub read their cache and offline settings then, so each script imports them itself. What
still differs from a fresh interpreter: the preloaded modules are in `sys.modules` before the script
runs (a script that uses `torch._dynamo` without importing it would pass here), and every script has the
server's hash seed. The real tier and the demo run fresh, as a user runs them;
`LLM_TUNING_PREFORK=0 bash test.sh` runs every script fresh.
"""

from __future__ import annotations

import atexit
import builtins
import importlib
import importlib.machinery
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

PRELOAD = ("torch", "torch._dynamo", "torch._inductor.compile_fx", "torch.distributed.tensor",
           "bitsandbytes", "numpy", "sympy")
# Environment variables that the preloaded libraries (or the interpreter) read at start-up: a script
# whose environment sets one of them differently runs in a fresh interpreter.
START_UP_ENV = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "NPY_", "TORCH", "PYTORCH", "CUDA", "NVIDIA",
                "BNB_", "SYMPY", "LD_", "PYTHON")
TEMP_DIR_ENV = {"TMPDIR", "TEMP", "TMP"}  # exact names: TEMPLATE (train.sh's) is not one of them
PER_SCRIPT_ENV = {"PYTHONPATH", "PYTHONUNBUFFERED"}  # applied to each script
# read when used, not at import: what torchrun sets for its workers, where C++ ops are built, and how
# torch.cuda.is_available() asks (deepspeed's import sets it in the environment its processes pass on)
RUN_TIME_ENV = ("TORCHELASTIC_", "TORCH_NCCL_", "TORCH_EXTENSIONS_DIR", "PYTORCH_NVML_BASED_CUDA_CHECK")
SOCKET_ENV = "LLM_TUNING_PREFORK_SOCKET"
CLIENT = Path(__file__).with_name("prefork_python.py")


# --- the tests' side -------------------------------------------------------------------------------

class Prefork:
    """The server process and the directory holding its `python` client."""

    def __init__(self, root: Path):
        self.bin_dir = root / "bin"
        self.bin_dir.mkdir(parents=True)
        self.socket_path = root / "server.sock"
        client = self.bin_dir / "python"
        client.write_text(f"#!{sys.executable} -IS\n{CLIENT.read_text()}")  # one word: the kernel passes one
        client.chmod(0o755)
        for alias in ("python3", f"python{sys.version_info.major}.{sys.version_info.minor}"):
            (self.bin_dir / alias).symlink_to("python")
        self.python = str(client)
        self.process = subprocess.Popen([sys.executable, __file__, str(self.socket_path)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        if self.process.stdout.readline() != b"ready\n":
            raise RuntimeError(f"the prefork server did not start (exit status {self.process.wait()})")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()


def enabled() -> bool:
    return os.environ.get("LLM_TUNING_PREFORK", "1") != "0"


ACTIVE: Prefork | None = None  # set by tests/conftest.py for the session


def python() -> str:
    """The `python` a test runs a script with."""
    return ACTIVE.python if ACTIVE else sys.executable


def torchrun() -> list[str]:
    """`torchrun`, as `python -m torch.distributed.run` (what the console script runs): its workers, started
    with its `sys.executable`, run warm too."""
    return [python(), "-m", "torch.distributed.run"]


def path_with_python(path: str) -> str:
    """PATH with this interpreter's bin directory first, and the warm `python` before it."""
    venv_bin = str(Path(sys.executable).parent)
    return os.pathsep.join([*([str(ACTIVE.bin_dir)] if ACTIVE else []), venv_bin, path])


# --- the server ------------------------------------------------------------------------------------

def start_up_env_differences(env: dict[str, str], server_env: dict[str, str],
                              set_by_imports: dict[str, str]) -> list[str]:
    """The start-up settings in `env` that differ from those the server imported its libraries with. What
    the imports set themselves may be there (a parent that imported torch passes it on) or not."""
    expected = {**server_env, **{key: env[key] for key in set_by_imports.keys() & env.keys()
                                 if env[key] == set_by_imports[key]}}
    keys = {key for key in {*env, *expected}
            if (key.startswith(START_UP_ENV) or key in TEMP_DIR_ENV) and not key.startswith(RUN_TIME_ENV)
            and key not in PER_SCRIPT_ENV}
    return sorted(key for key in keys if env.get(key) != expected.get(key))


def parse_command(args: list[str], cwd: str) -> tuple[dict, str | None]:
    """`[-u] (-m module | script) args...` -> what to run, or why the real interpreter must run it."""
    unbuffered = False
    while args and args[0] == "-u":
        unbuffered, args = True, args[1:]
    if not args or (args[0].startswith("-") and args[0] != "-m"):
        return {}, f"options {args[:1]}"
    if args[0] == "-m":
        if len(args) < 2:
            return {}, "-m without a module"
        return {"module": args[1], "args": args[2:], "unbuffered": unbuffered}, None
    if not os.path.isfile(os.path.join(cwd, args[0])) or not args[0].endswith(".py"):
        return {}, f"not a .py file: {args[0]}"
    return {"script": args[0], "args": args[1:], "unbuffered": unbuffered}, None


def receive(connection: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(connection, 1 << 16, 256)
    size = int.from_bytes(data[:8], "big")
    data = data[8:]
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client went away mid-request")
        data += chunk
    return json.loads(data), fds


def log(line: str) -> None:
    """LLM_TUNING_PREFORK_LOG=file: a line per script, run warm or fresh (and why)."""
    if os.environ.get("LLM_TUNING_PREFORK_LOG"):
        with open(os.environ["LLM_TUNING_PREFORK_LOG"], "a") as out:
            out.write(line + "\n")


def serve(socket_path: str) -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: go when the pytest worker goes
    server_env = dict(os.environ)
    for name in PRELOAD:
        importlib.import_module(name)
    # what the imports set (torch's inductor sets TORCHINDUCTOR_CACHE_DIR), as a script's own imports would
    set_by_imports = {key: value for key, value in os.environ.items() if key not in server_env}
    base_path = [entry for entry in sys.path[1:]
                 if entry not in os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the supervisors are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_path)
    server.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        connection, _ = server.accept()
        try:
            request, fds = receive(connection)
        except (OSError, ValueError):
            connection.close()
            continue
        command, reason = parse_command(request["argv"], request["cwd"])
        differences = start_up_env_differences(request["env"], server_env, set_by_imports)
        if differences:
            reason = f"start-up settings differ: {', '.join(differences)}"
        log(f"{'fresh (' + reason + ')' if reason else 'warm'}: python {' '.join(request['argv'])[:200]}")
        if reason:
            connection.sendall(f"fallback {reason}\n".encode())
        elif os.fork() == 0:
            server.close()
            request["env"] = {**set_by_imports, **request["env"]}
            supervise(connection, request, command, fds, base_path)
        for fd in fds:
            os.close(fd)
        connection.close()


def supervise(connection: socket.socket, request: dict, command: dict, fds: list[int],
              base_path: list[str]) -> None:
    """Runs in a fork: fork the script's process, tell the client its pid, then its exit status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pid = os.fork()
    if pid == 0:
        run(request, command, fds, base_path)
    for fd in fds:
        os.close(fd)
    process = os.pidfd_open(pid)
    connection.sendall(f"pid {pid}\n".encode())
    while True:
        readable, _, _ = select.select([connection, process], [], [])
        if process in readable:
            break
        if not connection.recv(1):  # the client was killed: so is its script
            os.kill(pid, signal.SIGKILL)
            break
    _, status = os.waitpid(pid, 0)
    try:
        connection.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
    finally:
        os._exit(0)


# --- in the script's process -----------------------------------------------------------------------

def place_fds(targets: list[int], received: list[int]) -> None:
    """Give the received descriptors the numbers they had in the client, and close every other one."""
    import fcntl

    above = max([*targets, *received, 2]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, above) for fd in received]
    for target, fd in zip(targets, moved):
        os.dup2(fd, target, inheritable=True)
    for fd in map(int, os.listdir("/proc/self/fd")):
        if fd not in targets:
            try:
                os.close(fd)
            except OSError:
                pass


def open_stdio(fd: int, write: bool, unbuffered: bool, like: io.TextIOWrapper):
    """sys.stdin/stdout/stderr as the interpreter makes them at start-up."""
    try:
        raw = io.FileIO(fd, "wb" if write else "rb", closefd=False)
    except OSError:
        return None
    if write:
        buffer = raw if unbuffered else io.BufferedWriter(raw)
        return io.TextIOWrapper(buffer, like.encoding, like.errors, newline="\n",
                                line_buffering=not unbuffered and (raw.isatty() or fd == 2), write_through=unbuffered)
    return io.TextIOWrapper(io.BufferedReader(raw), like.encoding, like.errors, line_buffering=raw.isatty())


def run(request: dict, command: dict, fds: list[int], base_path: list[str]) -> None:
    """Become `python <argv>` as the client was asked to be, run it, and exit as the interpreter does."""
    place_fds(request["fds"], fds)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    unbuffered = command["unbuffered"] or bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = sys.__stdin__ = open_stdio(0, False, False, sys.stdin)
    sys.stdout = sys.__stdout__ = open_stdio(1, True, unbuffered, sys.stdout)
    sys.stderr = sys.__stderr__ = open_stdio(2, True, unbuffered, sys.stderr)
    sys.executable = request["executable"]
    sys.orig_argv = [sys.executable, *request["argv"]]
    python_path = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    script = command.get("script")
    first = os.path.dirname(os.path.realpath(script)) if script else os.getcwd()
    sys.path[:] = [first, *python_path, *base_path]
    importlib.invalidate_caches()
    if "numpy" in sys.modules:  # a fresh interpreter seeds numpy's global generator from the OS
        sys.modules["numpy"].random.seed()
    status = 0
    try:
        if script:
            run_script(script, command["args"])
        else:
            import runpy

            sys.argv = ["-m", *command["args"]]
            runpy._run_module_as_main(command["module"])
    except SystemExit as stop:
        status = exit_status(stop.code)
    except BaseException as error:  # noqa: BLE001 - printed as the interpreter prints it
        error = error.with_traceback(without_server_frames(error.__traceback__))
        sys.excepthook(type(error), error, error.__traceback__)
        status = -signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1
    exit_as_the_interpreter(status)


def run_script(script: str, args: list[str]) -> None:
    path = os.path.abspath(script)
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=path, __cached__=None, __builtins__=builtins,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", path))
    sys.modules["__main__"] = main
    sys.argv = [script, *args]
    with io.open_code(path) as source:
        code = compile(source.read(), path, "exec")
    exec(code, main.__dict__)


def without_server_frames(traceback: types.TracebackType | None) -> types.TracebackType | None:
    while traceback and traceback.tb_frame.f_code.co_filename == __file__:
        traceback = traceback.tb_next
    return traceback


def exit_status(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def exit_as_the_interpreter(status: int) -> None:
    """Wait for the script's threads, run its atexit functions, flush, exit (SIGINT as Python does)."""
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and not stream.closed:
                stream.flush()
        except OSError:
            status = status or 120
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status)


if __name__ == "__main__":
    serve(sys.argv[1])
