"""Every shell command in the docs' code blocks runs, offline, as it is written.

The commands are read from the fenced (```bash, ```sh, untagged) and 4-space indented code blocks
of the READMEs, backslash continuations joined; comment lines and output listings are not
commands. Each one runs in document order in a copy of the repository's tracked files, with the
hub ids the docs use mapped to tiny random models by a fake Hugging Face hub cache (HF_HUB_OFFLINE,
no production hook) and every training run shortened by LLM_TUNING_MAX_STEPS. A command fails its
test when it exits non-zero, or when a file it promises (--output_dir, --output, --save_name,
--plot, "writes PATH" in its comment, loss.png after training) is not there afterwards.

Servers (api_server.py, web_demo.py, tensorboard) start, must answer (the API server one real chat
request through the openai client), and are stopped; an interactive chat.py gets a question and
`exit` on stdin. A command shown in several places runs once: README_zh.md shares README.md's
sandbox, and README.md, which repeats commands of the folder READMEs, reuses their results (and
the files those commands wrote) while the folder READMEs run beside it in two background streams.
Commands a doc lists as what one of its scripts runs (RUN_BY_SCRIPT) ran when the script did: the
test checks the files they promise in the script's sandbox.

Not run, each skipped by name with the reason: commands marked for a GPU (a comment holding "GPU"
on the command's line or in the comment lines just above it), and the few in NOT_RUN.

    pytest tests/test_docs.py -rs                      # every doc
    pytest tests/test_docs.py -rs -k "pretrain/README"  # one doc (runs only what it needs)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

import pytest

import prefork

REPO = Path(__file__).resolve().parent.parent

# Doc groups: the commands of a group run in order in one sandbox. README.md and README_zh.md
# show the same commands, so they share one group and each command runs once.
DOC_GROUPS = {
    "README": ("README.md", "README_zh.md"),
    "RLHF": ("RLHF/README.md",),
    "pretrain": ("pretrain/README.md",),
    "HC3": ("projects/ChatBaichuan-HC3/README.md",),
    "RulaiGPT": ("projects/RulaiGPT/README.md",),
    "SDE": ("SDE/README.md",),
    "configs": ("configs/README.md",),
    "bench": ("bench/README.md",),
}
# The first word of a command line (after VAR=value assignments); any other line in a shell block
# must be a comment, so no command is dropped unnoticed.
COMMAND_WORDS = {"python", "python3", "sh", "bash", "torchrun", "accelerate", "deepspeed", "tensorboard",
                 "pytest", "pip"}
# The hub ids the docs' offline commands load, and the tiny family stand-in each one gets.
HUB_STAND_INS = {"Qwen/Qwen2.5-7B-Instruct": "qwen2", "Qwen/Qwen3-8B": "qwen3",
                 "baichuan-inc/Baichuan-7B": "baichuan"}
# Commands that are not run, by a piece of their text, with the reason.
NOT_RUN = {
    "bash test.sh --fast": "runs the quick tier of this suite, which CI runs whole",
    "bash test.sh": "runs the whole test suite, this test included",
    "pytest tests/": "runs tests of this suite, which CI runs anyway",
    "my_pairs.jsonl": "a pattern for the user's own preference data",
    "bench/train_throughput.py": "a 5-40 min benchmark that prints figures, not a check (its batching "
                                 "modes are tested in tests/test_batching.py and tests/test_pair_batches.py)",
    "--scale 10000,100000,1000000": "a 15 min benchmark of the tokenize step on up to a million generated rows "
                                    "(streaming is tested in tests/test_tokenize_streaming.py)",
    "REAL=1 bash demo.sh": "trains the real SmolLM2 for minutes: tests/test_real_model.py runs it and checks it",
}
MAX_STEPS = "2"
# With README.md, the folder READMEs run beside it in these two background streams of about equal
# length (each group alone, `pytest -n 0 -k <doc>` with one thread: RLHF ~80 s, its stage commands run
# once, inside rlhf.sh; pretrain ~30 s, HC3 ~60 s, RulaiGPT ~40 s; SDE ~150 s, bench ~75 s, configs ~6 s),
# so the three keep both cores busy: each command is one process on one thread.
BACKGROUND_STREAMS = (("RLHF", "pretrain", "HC3", "RulaiGPT"), ("SDE", "bench", "configs"))
# Commands a doc lists as what one of its scripts runs, by the words of the comment that introduces
# them; the list ends at the block's first blank line. They ran when the script ran, earlier in the
# same group, so they are not run a second time: their promised files must be there. The value names
# the script's command and the test that checks the list is exactly what the script runs.
RUN_BY_SCRIPT = {
    "exactly what `sh RLHF/rlhf.sh` runs":
        ("sh RLHF/rlhf.sh", "tests/test_rlhf.py::test_the_readme_stage_commands_are_what_rlhf_sh_runs"),
}
# Commands that run their full length: the demo checks that its model learned the answers.
UNCAPPED = ("bash demo.sh",)
COMMAND_TIMEOUT_S = 600
SERVER_PORTS = {"api_server.py": 8000, "web_demo.py": 7860, "tensorboard": 6006}
CHAT_STDIN = "你好\nexit\n"


@dataclass
class DocCommand:
    doc: str
    line: int
    text: str
    comment: str  # its trailing comment and the comment lines just above it
    run_by: str | None = None  # a RUN_BY_SCRIPT marker above it in its block: the script runs it

    @property
    def test_id(self) -> str:
        return f"{self.doc}:{self.line}"

    def words(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    @property
    def key(self) -> str:
        """The command without its comment: what makes two places show the same command."""
        return shlex.join(self.words())


def trailing_comment(line: str) -> str:
    """The text after a '#' that starts a shell comment (outside quotes, after a blank)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[i + 1:].strip()
    return ""


def first_word(words: list[str]) -> str | None:
    rest = [w for w in words if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w)]
    return rest[0] if rest else None


def code_blocks(lines: list[str]):
    """(first line number, strict, lines) of each shell code block: fenced ```bash/```sh (strict:
    every line a command or a comment), untagged fenced or indented (commands or output)."""
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"\s*```(\w*)", line)
        if fence:
            start, body = i + 2, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            if fence.group(1) in {"bash", "sh", ""}:  # untagged: commands or an output listing
                yield start, fence.group(1) != "", body
        elif line.startswith("    ") and line.strip() and (i == 0 or not lines[i - 1].strip()):
            start, body = i + 1, []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            yield start, False, body
            continue
        i += 1


def extract_commands(doc: str, text: str | None = None) -> list[DocCommand]:
    """The shell commands of one doc (or of `text`), in order, continuations joined."""
    commands = []
    text = (REPO / doc).read_text(encoding="utf-8") if text is None else text
    for start, shell_block, body in code_blocks(text.splitlines()):
        comments: list[str] = []
        run_by = None
        j = 0
        while j < len(body):
            number, text = start + j, body[j].rstrip()
            while text.endswith("\\") and j + 1 < len(body):
                j += 1
                text = text[:-1].rstrip() + " " + body[j].strip()
            j += 1
            stripped = text.strip()
            if not stripped:
                comments, run_by = [], None
                continue
            if stripped.startswith("#"):
                comments.append(stripped.lstrip("#").strip())
                run_by = next((marker for marker in RUN_BY_SCRIPT if marker in stripped), run_by)
                continue
            try:
                word = first_word(shlex.split(stripped, comments=True))
            except ValueError:
                word = None
            if word in COMMAND_WORDS:
                commands.append(DocCommand(doc, number, stripped, " ".join([*comments, trailing_comment(stripped)]),
                                           run_by))
            elif shell_block:
                raise AssertionError(f"{doc}:{number}: {stripped!r} is neither a comment nor a command "
                                     f"starting with one of {sorted(COMMAND_WORDS)}")
            comments = []
    return commands


def why_not_run(command: DocCommand) -> str | None:
    if "GPU" in command.comment:
        return f"marked for a GPU: {command.comment}"
    for piece, reason in NOT_RUN.items():
        if piece in command.text:
            return reason
    return None


def group_commands(group: str) -> list[list[DocCommand]]:
    """The group's commands in run order; a command shown in several docs of the group runs once
    (the list holds each place it is shown)."""
    runs: dict[str, list[DocCommand]] = {}
    for doc in DOC_GROUPS[group]:
        for command in extract_commands(doc):
            runs.setdefault(command.key, []).append(command)
    return list(runs.values())


ALL = [(group, index, place) for group in DOC_GROUPS for index, places in enumerate(group_commands(group))
       for place in places]


# --- promised files ------------------------------------------------------------------------------

def flag_values(words: list[str], flag: str) -> list[str]:
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == flag]


def env_assignments(words: list[str]) -> dict[str, str]:
    env = {}
    for word in words:
        match = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", word)
        if not match:
            break
        env[match.group(1)] = match.group(2)
    return env


def promised_paths(command: DocCommand) -> list[str]:
    """Files and folders the command says it writes."""
    words = command.words()
    env = env_assignments(words)
    paths = [*flag_values(words, "--output_dir"), *flag_values(words, "--output"), *flag_values(words, "--plot"),
             *(f"data/tokenized_data/{name}" for name in flag_values(words, "--save_name"))]
    if "tokenize.sh" in words:
        paths.append(f"data/tokenized_data/{env.get('SAVE_NAME', 'simple_math_4op')}")
    if "train.sh" in words:
        paths.append(env.get("OUTPUT_DIR", f"weights/{env.get('DATASET', 'simple_math_4op')}"))
    paths += re.findall(r"(?:writes|写入)\s+`?([\w./-]+/)", command.comment)
    return paths


def missing_promises(command: DocCommand, sandbox: Path, output: str) -> list[str]:
    missing = [path for path in promised_paths(command) if not (sandbox / path).exists()]
    for path in promised_paths(command):
        trained = sandbox / path / "trainer_log.jsonl"
        if trained.is_file() and not (sandbox / path / "loss.png").is_file() and "no loss.png written" not in output:
            missing.append(f"{path}/loss.png (and no line saying why not)")
    return missing


# --- the sandbox -----------------------------------------------------------------------------------

def make_sandbox(root: Path) -> Path:
    """A copy of the tracked files, with the repository's .venv usable as it is (no install runs)."""
    sandbox = root / "repo"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file():
            (sandbox / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, sandbox / name)
    venv = Path(sys.prefix)
    (sandbox / ".venv").mkdir()
    for entry in venv.iterdir():
        if not entry.name.startswith(".llm_tuning"):
            (sandbox / ".venv" / entry.name).symlink_to(entry)
    # scripts/setup_env.sh installs only when its stamp differs: this one says the project is installed.
    stamp = (f"{sha256((sandbox / 'pyproject.toml').read_bytes()).hexdigest()[:16]} "
             f"{os.environ.get('TORCH_SPEC', 'torch==2.13.0+cpu')} .")
    (sandbox / ".venv" / ".llm_tuning-installed").write_text(f"{stamp}\n{stamp[:-1]}.[all,dev]\n")
    return sandbox


def sandbox_env(sandbox: Path, hub_cache: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in {"VIRTUAL_ENV", "PYTHONHOME"} and not key.startswith(("HF_", "PYTEST"))}
    env.update(PATH=prefork.path_with_python(env.get("PATH", "")), PYTHONPATH=str(sandbox),
               HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1", HF_HOME=str(hub_cache.parent / "hf_home"),
               LLM_TUNING_MAX_STEPS=MAX_STEPS, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               LLM_TUNING_CACHE=str(REPO / ".cache"),  # the real model is fetched and converted once, not per sandbox
               MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return env


@dataclass
class Result:
    returncode: int
    output: str
    missing: list[str] = field(default_factory=list)


def wait_for(url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"no answer from {url} within {timeout_s:.0f} s")


def ask_api_server(command: DocCommand, port: int) -> str:
    """One real request, as the README's client sends it."""
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1",
                    api_key=env_assignments(command.words()).get("API_KEY", "none"))
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(model=model, temperature=0, max_tokens=8,
                                           messages=[{"role": "user", "content": "What is 75 + 54?"}])
    return f"\n[test] {model} answered: {reply.choices[0].message.content!r}\n"


def run_server(command: DocCommand, sandbox: Path, env: dict[str, str], server: str) -> Result:
    """Start a server, wait until it answers (the API server: a real chat request), then stop it."""
    port = int((flag_values(command.words(), "--port") or [SERVER_PORTS[server]])[0])
    log = sandbox / f".server-{command.line}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(["bash", "-c", command.text], cwd=sandbox, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    note, returncode = "", 0
    try:
        if server == "api_server.py":
            wait_for_api(port, process, command)
            note = ask_api_server(command, port)
        else:
            wait_for(f"http://127.0.0.1:{port}/", process)
    except Exception as err:  # noqa: BLE001 - any failure to answer fails the command
        note, returncode = f"\n[test] {type(err).__name__}: {err}\n", 1
    finally:
        stop(process)
    return Result(returncode, log.read_text(errors="replace") + note)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after a minute."""
    for sig, grace_s in ((signal.SIGTERM, 60), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_for_api(port: int, process: subprocess.Popen, command: DocCommand) -> None:
    import httpx

    key = env_assignments(command.words()).get("API_KEY")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before answering on port {port}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5,
                         headers={"Authorization": f"Bearer {key}"} if key else {}).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"no answer on port {port} within 180 s")


def run_command(command: DocCommand, sandbox: Path, env: dict[str, str]) -> Result:
    words = command.words()
    if any(piece in command.text for piece in UNCAPPED):
        env = {key: value for key, value in env.items() if key != "LLM_TUNING_MAX_STEPS"}
    program = words[words.index(first_word(words)):][:2]  # `tensorboard`, or `python <script>`
    server = next((name for name in SERVER_PORTS if name in program), None)
    if server:
        result = run_server(command, sandbox, env, server)
    else:
        interactive = "chat.py" in words and "--query" not in words
        try:
            done = subprocess.run(["bash", "-c", command.text], cwd=sandbox, env=env, text=True,
                                  input=CHAT_STDIN if interactive else "", stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=COMMAND_TIMEOUT_S)
            result = Result(done.returncode, done.stdout)
        except subprocess.TimeoutExpired as err:
            result = Result(124, f"{err.stdout or ''}\n[test] still running after {COMMAND_TIMEOUT_S} s")
    if result.returncode == 0:
        result.missing = missing_promises(command, sandbox, result.output)
    return result


def file_stats(sandbox: Path) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file under the sandbox, .venv aside (a link, not walked)."""
    stats = {}
    for folder, _, names in os.walk(sandbox):
        for name in names:
            path = Path(folder, name)
            if not path.is_symlink():
                info = path.stat()
                stats[str(path.relative_to(sandbox))] = (info.st_mtime_ns, info.st_size)
    return stats


@dataclass
class Ran:
    """A command that passed in one sandbox, and the files it wrote there."""
    result: Result
    sandbox: Path
    written: list[str]
    place: str


class GroupRunner:
    """Runs a doc group's commands in order, as far as a test needs, each once.

    A command that already passed in another group's sandbox (README.md repeats the folder READMEs'
    commands) is not run again: its result stands, and the files it wrote are copied here."""

    def __init__(self, group: str, root: Path, hub_cache: Path, passed: dict[str, Ran]):
        self.commands = group_commands(group)
        self.sandbox = make_sandbox(root)
        self.env = sandbox_env(self.sandbox, hub_cache)
        self.passed = passed
        self.results: list[Result | None] = []
        self.lock = threading.Lock()  # a background thread may run this group ahead of its tests
        self.others: list[GroupRunner] = []  # groups running beside this one, whose results it reuses

    def result(self, index: int) -> Result | None:
        """The result of command `index` (None: not run), running the ones before it first."""
        with self.lock:
            while len(self.results) <= index:
                command = self.commands[len(self.results)][0]
                self.results.append(None if why_not_run(command) else self.run(command))
            return self.results[index]

    def run(self, command: DocCommand) -> Result:
        if command.run_by:
            return self.ran_by_script(command)
        for other in self.others:  # the same command in a group running beside this one: wait for it there
            same = [i for i, places in enumerate(other.commands) if places[0].key == command.key]
            if same:
                other.result(same[0])
        earlier = self.passed.get(command.key)
        if earlier is not None:
            for name in earlier.written:
                (self.sandbox / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(earlier.sandbox / name, self.sandbox / name)
            output = f"{earlier.result.output}\n[test] passed as {earlier.place}; its files copied here\n"
            return Result(0, output, missing_promises(command, self.sandbox, output))
        before, started = file_stats(self.sandbox), time.monotonic()
        try:
            result = run_command(command, self.sandbox, self.env)
        except Exception as err:  # noqa: BLE001 - the harness failing on one command fails that command only
            result = Result(1, f"[test] {type(err).__name__}: {err}")
        result.output += f"\n[test] {time.monotonic() - started:.1f} s\n"
        if result.returncode == 0 and not result.missing:
            after = file_stats(self.sandbox)
            written = [name for name, stat in after.items() if before.get(name) != stat]
            self.passed[command.key] = Ran(result, self.sandbox, written, command.test_id)
        return result

    def ran_by_script(self, command: DocCommand) -> Result:
        """A command the doc lists as what a script runs: the script's run, earlier in this sandbox, stands for it."""
        script, checked_by = RUN_BY_SCRIPT[command.run_by]
        index = next((i for i, places in enumerate(self.commands[:len(self.results)]) if places[0].key == script), None)
        if index is None:
            return Result(1, f"[test] `{script}` is not shown before the commands it runs")
        ran, place = self.results[index], self.commands[index][0].test_id
        if ran is None or ran.returncode != 0 or ran.missing:
            return Result(1, f"[test] run by `{script}` ({place}), which did not pass")
        output = f"{ran.output}\n[test] run by `{script}` ({place}); {checked_by} checks it runs this command\n"
        return Result(0, output, missing_promises(command, self.sandbox, output))


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory) -> Path:
    from tests.hub_cache import save_hub_cache

    return save_hub_cache(tmp_path_factory.mktemp("hub") / "hub", HUB_STAND_INS)


@pytest.fixture(scope="session")
def runners(request, tmp_path_factory, hub_cache):
    """The doc groups' runners. When README.md runs with folder READMEs, the folder groups run in
    BACKGROUND_STREAMS beside it, and README.md reuses their results for the commands it repeats."""
    passed: dict[str, Ran] = {}
    selected = [group for group in DOC_GROUPS
                if any(item.callspec.params.get("group") == group for item in request.session.items
                       if hasattr(item, "callspec"))]
    made = {group: GroupRunner(group, tmp_path_factory.mktemp(f"docs-{group}"), hub_cache, passed)
            for group in selected}
    streams = []
    if "README" in made and len(made) > 1:
        made["README"].others = [runner for group, runner in made.items() if group != "README"]
        for groups in BACKGROUND_STREAMS:
            stream = [made[group] for group in groups if group in made]
            streams.append(threading.Thread(target=run_all, args=(stream,), daemon=True))
            streams[-1].start()
    yield made.__getitem__
    for stream in streams:
        stream.join()


def run_all(runners: list[GroupRunner]) -> None:
    for runner in runners:
        runner.result(len(runner.commands) - 1)


@pytest.mark.parametrize(("group", "index", "command"), ALL, ids=[place.test_id for _, _, place in ALL])
def test_doc_command(group, index, command, runners):
    reason = why_not_run(command)
    if reason:
        pytest.skip(f"{command.test_id}: {reason}")
    result = runners(group).result(index)
    tail = "\n".join(result.output.splitlines()[-40:])
    assert result.returncode == 0, f"{command.test_id}: `{command.text}` exited {result.returncode}:\n{tail}"
    assert not result.missing, (f"{command.test_id}: `{command.text}` did not write what the docs promise: "
                                f"{', '.join(result.missing)}\n{tail}")


def test_readme_translations_show_the_same_commands():
    """README_zh.md is README.md in Chinese: the same commands, in the same order."""
    english = [command.key for command in extract_commands("README.md")]
    chinese = [command.key for command in extract_commands("README_zh.md")]
    assert chinese == english


EXAMPLE_DOC = """Intro.

```bash
# build it
MODEL=Org/Name sh tokenize.sh --a 1 \\
    --b "x # y"   # two lines
# on a GPU
python train.py --bf16 true
```

```
policy  reward
SFT     -2.32
```

    python chat.py --query hi
    batching: sorted

```python
print("not a shell command")
```
"""


def test_extract_commands_joins_lines_and_keeps_comments():
    commands = extract_commands("EXAMPLE.md", EXAMPLE_DOC)
    assert [(c.line, c.text) for c in commands] == [
        (5, 'MODEL=Org/Name sh tokenize.sh --a 1 --b "x # y"   # two lines'),
        (8, "python train.py --bf16 true"),
        (16, "python chat.py --query hi"),
    ]
    assert commands[0].comment == "build it two lines"
    assert commands[0].words()[-1] == "x # y"
    assert [why_not_run(c) is not None for c in commands] == [False, True, False]
    assert promised_paths(extract_commands("X.md", "```bash\nSAVE_NAME=s sh tokenize.sh\n```")[0]) == [
        "data/tokenized_data/s"]


def test_commands_a_doc_lists_as_what_a_script_runs_are_marked_to_the_blank_line():
    marker = "exactly what `sh RLHF/rlhf.sh` runs"
    doc = f"```bash\n# every stage: {marker}\npython a.py\npython b.py\n\npython c.py\n```\n"
    assert [command.run_by for command in extract_commands("X.md", doc)] == [marker, marker, None]
    listed = [command.words()[1] for command in extract_commands("RLHF/README.md") if command.run_by]
    assert listed == ["RLHF/make_rlhf_data.py", "tokenize_dataset_rows.py", "qwen_lora_tuning.py",
                      "RLHF/reward_model.py", "RLHF/ppo.py", "RLHF/dpo.py", "RLHF/orpo.py", "RLHF/grpo.py",
                      "RLHF/evaluate.py"]


def test_extract_commands_refuses_an_unknown_line_in_a_shell_block():
    with pytest.raises(AssertionError, match="X.md:2: 'cd somewhere' is neither a comment nor a command"):
        extract_commands("X.md", "```bash\ncd somewhere\n```")


def test_max_steps_env_caps_every_training_run(monkeypatch, capsys, tmp_path):
    from transformers import TrainingArguments

    from llm_tuning.training import cap_training_steps

    @dataclass
    class Iterations:
        num_iterations: int = 30

    monkeypatch.setenv("LLM_TUNING_MAX_STEPS", "3")
    runs = [TrainingArguments(output_dir=str(tmp_path), max_steps=-1, logging_steps=10),
            TrainingArguments(output_dir=str(tmp_path), max_steps=2), Iterations()]
    cap_training_steps(runs)
    assert [runs[0].max_steps, runs[0].logging_steps, runs[1].max_steps, runs[2].num_iterations] == [3, 1, 2, 3]
    assert capsys.readouterr().out.count("LLM_TUNING_MAX_STEPS=3: training stops after") == 3
    monkeypatch.setenv("LLM_TUNING_MAX_STEPS", "two")
    with pytest.raises(SystemExit) as exit_info:
        cap_training_steps(runs)
    assert exit_info.value.code == 2
    assert "LLM_TUNING_MAX_STEPS must be a positive whole number of steps, not 'two'" in capsys.readouterr().err


def test_a_failed_step_stops_the_scripts_that_source_setup_env(tmp_path):
    """demo.sh and test.sh run under `set -e` and source scripts/setup_env.sh: a step that fails after
    it stops them. A shell that sourced it without `set -e` (a terminal) keeps going."""
    sandbox = make_sandbox(tmp_path)
    env = {key: value for key, value in os.environ.items() if key not in {"VIRTUAL_ENV", "PYTHONHOME"}}

    def fail_a_step(options: str) -> subprocess.CompletedProcess:
        script = f"{options}source scripts/setup_env.sh; false; echo after the failed step"
        return subprocess.run(["bash", "-c", script], cwd=sandbox, env=env, capture_output=True, text=True,
                              timeout=120)

    stopped, kept_going = fail_a_step("set -euo pipefail; "), fail_a_step("")
    assert stopped.returncode == 1 and "after the failed step" not in stopped.stdout, stopped
    assert kept_going.returncode == 0 and "after the failed step" in kept_going.stdout, kept_going
    assert "installing" not in stopped.stdout + kept_going.stdout  # the sandbox's .venv counts as set up
