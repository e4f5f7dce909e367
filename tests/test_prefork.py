"""The warm `python` the tests run scripts with (tests/prefork.py) behaves as the real interpreter does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import prefork

PROBE = '''
import os, sys
print("warm" if "torch" in sys.modules else "fresh", file=sys.stderr)
print(__name__, os.path.basename(__file__), sys.argv, sys.path[0] == os.path.dirname(os.path.abspath(__file__)))
print(os.getcwd(), os.environ.get("PROBE_VALUE"), sys.path[1], sys.stdin.read())
print(sys.stdout.line_buffering, sys.stdout.write_through, sys.stderr.line_buffering, sys.flags)
if len(sys.argv) > 1 and sys.argv[1] == "fd":
    os.write(int(sys.argv[2]), b"through the passed descriptor")
elif len(sys.argv) > 1 and sys.argv[1] == "sleep":
    print("started", flush=True)
    import time
    time.sleep(60)
elif len(sys.argv) > 1:
    {"code": lambda: sys.exit(3), "message": lambda: sys.exit("a message for the user"),
     "raise": lambda: 1 / 0}[sys.argv[1]]()
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    if prefork.ACTIVE is None:
        pytest.skip("LLM_TUNING_PREFORK=0: the scripts run in fresh interpreters")
    script = tmp_path_factory.mktemp("probe") / "probe.py"
    script.write_text(PROBE)
    return script


def run_both(args: list[str], cwd: Path, env: dict | None = None, **kwargs):
    """(fresh, warm): the same command run by the real interpreter and by the warm one."""
    env = {**os.environ, "PROBE_VALUE": "汉字 and text", "PYTHONPATH": "/first/on/path", **(env or {})}
    kwargs.setdefault("input", "")
    return [subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, **kwargs)
            for python in (sys.executable, prefork.python())]


@pytest.mark.parametrize("case", ["", "code", "message", "raise"])
def test_a_script_prints_reads_and_exits_as_under_the_real_interpreter(probe, case):
    fresh, warm = run_both([probe.name, *([case] if case else [])], probe.parent, input="stdin text")
    assert fresh.stderr.splitlines()[0] == "fresh" and warm.stderr.splitlines()[0] == "warm"
    assert (warm.returncode, warm.stdout, warm.stderr.splitlines()[1:]) == \
           (fresh.returncode, fresh.stdout, fresh.stderr.splitlines()[1:])
    assert warm.returncode == {"": 0, "code": 3, "message": 1, "raise": 1}[case]


def test_a_module_and_a_descriptor_pass_through(probe):
    read_end, write_end = os.pipe()
    try:
        _, warm = run_both([probe.name, "fd", str(write_end)], probe.parent, pass_fds=(write_end,))
        assert warm.returncode == 0, warm.stderr
        os.close(write_end)
        assert os.read(read_end, 100).endswith(b"through the passed descriptor")
    finally:
        os.close(read_end)
    fresh, warm = run_both(["-m", "json.tool", "--sort-keys"], probe.parent, input='{"b": 1, "a": "汉"}')
    assert (warm.returncode, warm.stdout) == (fresh.returncode, fresh.stdout) == (0, '{\n    "a": "\\u6c49",\n'
                                                                                    '    "b": 1\n}\n')


def test_what_it_cannot_run_warm_runs_in_the_real_interpreter(probe):
    command = [prefork.python(), "-c", "import sys; print(sys.executable, 'torch' in sys.modules)"]
    assert subprocess.run(command, capture_output=True, text=True).stdout == f"{sys.executable} False\n"
    other_threads = {**os.environ, "OMP_NUM_THREADS": str(int(os.environ.get("OMP_NUM_THREADS", "1")) + 1)}
    done = subprocess.run([prefork.python(), probe.name], cwd=probe.parent, env=other_threads,
                          capture_output=True, text=True, input="")
    assert done.stderr.splitlines()[0] == "fresh"


def test_only_start_up_settings_send_a_script_to_a_fresh_interpreter():
    server_env = {"OMP_NUM_THREADS": "1", "TMPDIR": "/tmp", "PATH": "/bin"}
    set_by_imports = {"TORCHINDUCTOR_CACHE_DIR": "/tmp/inductor"}
    same = {**server_env, "TEMPLATE": "qwen3", "PATH": "/usr/bin", "PYTHONPATH": "/repo",
            "TORCHELASTIC_RUN_ID": "1", "TORCHINDUCTOR_CACHE_DIR": "/tmp/inductor"}
    assert prefork.start_up_env_differences(same, server_env, set_by_imports) == []
    other = {**server_env, "TMPDIR": "/elsewhere", "OMP_NUM_THREADS": "2", "TORCHINDUCTOR_CACHE_DIR": "/other"}
    assert prefork.start_up_env_differences(other, server_env, set_by_imports) == \
        ["OMP_NUM_THREADS", "TMPDIR", "TORCHINDUCTOR_CACHE_DIR"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_it_reaches_the_script(probe, sig):
    process = subprocess.Popen([prefork.python(), probe.name, "sleep"], cwd=probe.parent, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line == "started\n":
            break
    process.send_signal(sig)
    assert process.wait(timeout=30) == -sig  # as Python dies of SIGTERM, and of an uncaught KeyboardInterrupt
    if sig == signal.SIGINT:
        assert process.stderr.read().rstrip().endswith("KeyboardInterrupt")


def test_a_killed_client_takes_its_script_along(probe, tmp_path):
    pid_file = tmp_path / "pid"
    script = tmp_path / "sleeper.py"
    script.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    process = subprocess.Popen([prefork.python(), str(script)])
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    script_pid = int(pid_file.read_text())
    assert script_pid != process.pid  # the script runs in a fork of the server, not in the client
    process.kill()
    process.wait()
    while Path(f"/proc/{script_pid}").exists() and "Z" not in Path(f"/proc/{script_pid}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "the script outlived its client"
        time.sleep(0.05)
