"""Code reward: correct/partial/wrong programs, and every attack failing safely with nothing left running.

The attack tests run in each sandbox mode this machine offers the root user: the strongest (namespaces) and the
fallback without namespaces (what default Docker gets). As non-root they run in the strongest mode only.
"""

import ast
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

from nanor1 import sandbox
from nanor1.sandbox import MAX_OUTPUT_BYTES, MAX_PROCS, UID_BASE, code_reward, code_rewards, extract_code
from nanor1.sandbox import normalize_output, run_python

ROOT = os.geteuid() == 0
ADD = "Add them.\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
ADD_TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7", "output": "12"}]


def fence(code: str) -> str:
    return f"Here you go.\n```python\n{textwrap.dedent(code).strip()}\n```\n"


def sandbox_processes() -> list[str]:
    """Host processes owned by a sandbox uid (there must be none between calls)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        uid = int(status.split("\nUid:")[1].split()[0])
        if UID_BASE <= uid < UID_BASE + (1 << 23):
            found.append(f"{pid} uid={uid} {status.splitlines()[0]}")
    return found


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.fixture(autouse=True)
def nothing_left_running():
    yield
    assert sandbox_processes() == []


@pytest.fixture(params=["strongest", "no-namespaces"])
def iso(request) -> sandbox.Isolation:
    best = sandbox.isolation()
    if request.param == "strongest":
        return best
    if not (best.drop_uid and best.namespaces):
        pytest.skip("the strongest mode already is the no-namespace one (or we are not root)")
    return dataclasses.replace(best, namespaces=False)


# ---------------------------------------------------------------------------------------------------------------------
# What counts as passing


def test_extract_code_takes_the_last_closed_python_block():
    two = "```python\nprint(1)\n```\nthen\n```python3\nprint(2)\n```"
    assert extract_code(two) == "print(2)\n"
    assert extract_code(two + "\n```python\nprint(3)\n") == "print(2)\n"  # a truncated block is no block
    assert extract_code("```\nprint(1)\n```") is None
    assert extract_code("```js\nconsole.log(1)\n```") is None
    assert extract_code("no code") is None


def test_normalize_output_strips_trailing_whitespace_only():
    assert normalize_output("3  \n\n\n") == "3"
    assert normalize_output("a \r\nb\t\n") == normalize_output("a\nb") == "a\nb"
    assert normalize_output(" 3") != normalize_output("3")
    assert normalize_output("a\n\nb") != normalize_output("a\nb")


def test_correct_solution_gets_one():
    assert code_reward(ADD, ADD_TESTS) == 1.0
    spaced = fence("a, b = map(int, input().split())\nprint(a + b, '  ')\nprint()\nprint('\\t')")
    assert code_reward(spaced, ADD_TESTS) == 1.0  # trailing whitespace and blank lines at the end do not count


def test_partially_correct_solution_gets_the_fraction():
    buggy = fence("n = int(input())\nprint(n * n if n < 10 else 0)")
    tests = [{"input": "3", "output": "9"}, {"input": "4", "output": "16"}, {"input": "12", "output": "144"}]
    assert code_reward(buggy, tests) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "completion",
    [
        fence("print(4)"),  # wrong output
        fence("def f(:\n    pass"),  # syntax error
        fence("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(1)"),  # right output, bad exit
        fence("a, b = map(int, input().split())\nprint(a + b)\n1 / 0"),  # right output, then a crash
        fence("print(' 3')"),  # leading whitespace counts
        "The answer is 3.",  # no block
        "```python\na, b = map(int, input().split())\nprint(a + b)\n",  # unclosed block
    ],
)
def test_failing_solutions_get_zero(completion):
    assert code_reward(completion, ADD_TESTS[:1]) == 0.0


def test_bad_tests_are_the_callers_bug():
    for tests in ([], "1 2", [{"input": "1"}], [{"input": 1, "output": "1"}], [("1", "1")]):
        with pytest.raises(ValueError):
            code_reward(ADD, tests)
    with pytest.raises(ValueError):
        code_rewards([ADD, ADD], [ADD_TESTS])
    with pytest.raises(ValueError):
        run_python("print(1)", timeout_s=0)


def test_odd_model_output_never_raises():
    tests = [{"input": "", "output": "ok"}]
    odd = [
        (fence("print('ok')  # \ud800 lone surrogate"), 1.0),  # written as "?", in a comment
        (fence("print('\ud800')"), 0.0),
        (fence("print('o\x00k')"), 0.0),  # a null byte: SyntaxError, or the source ends there (3.11)
        (fence("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe ok')"), 0.0),  # not UTF-8
        (fence("print('ok')\n" * 5000), 0.0),
        (fence("import os\nos.close(0); os.close(1); os.close(2)"), 0.0),
    ]
    for completion, expected in odd:
        assert code_reward(completion, tests, timeout_s=1.0) == expected


def test_code_rewards_runs_completions_in_parallel():
    completions = [ADD, fence("print(3)"), "no code", fence("while True: pass"), ADD]
    rewards = code_rewards(completions, [ADD_TESTS] * 5, timeout_s=0.5, max_workers=3)
    assert rewards == [1.0, 0.5, 0.0, 0.0, 1.0]


def test_isolation_is_the_strongest_available():
    best = sandbox.isolation()
    assert best.drop_uid == ROOT  # as root the program never runs as root
    unshare = shutil.which("unshare")
    args = ["--pid", "--fork", "--net", "--ipc", "--mount"] + ([] if ROOT else ["--user"])
    if unshare and subprocess.run([unshare, *args, "true"], capture_output=True).returncode == 0:
        assert best.namespaces


def test_limits_and_identity_inside():
    probe = """
        import os, resource
        names = ["RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_CORE"]
        print([resource.getrlimit(getattr(resource, n)) for n in names])
        print((os.getresuid(), os.getgroups(), sorted(os.environ)))
    """
    out = run_python(textwrap.dedent(probe), timeout_s=1.5, memory_mb=300).stdout.splitlines()
    limits = ast.literal_eval(out[0])
    assert limits[0] == (300 << 20, 300 << 20)
    assert limits[1] == (2, 3)
    assert limits[3] == (MAX_OUTPUT_BYTES, MAX_OUTPUT_BYTES)
    assert limits[4] == (0, 0)
    if ROOT:
        assert limits[2] == (MAX_PROCS, MAX_PROCS)
        uids, groups, _ = ast.literal_eval(out[1])
        assert len(set(uids)) == 1 and uids[0] >= UID_BASE and groups == []
    assert "PATH" in out[1]


# ---------------------------------------------------------------------------------------------------------------------
# Attacks: each fails safely (no pass, so reward 0), and the autouse fixture checks that nothing is left running


def test_infinite_loops_time_out(iso):
    for code in ["while True: pass", "import time\nwhile True: time.sleep(1)"]:
        result = run_python(code, timeout_s=0.5, iso=iso)
        assert result.timed_out and not result.ok
    assert code_reward(fence("while True: pass"), ADD_TESTS[:1], timeout_s=0.5) == 0.0


def test_memory_hog_is_stopped(iso):
    hog = "x = bytes(300 << 20)\nprint('allocated')"  # calloc: address space, but no page touched
    control = run_python(hog, memory_mb=600, timeout_s=10.0, iso=iso)
    assert control.stdout == "allocated\n"  # the limit is what stops it below, nothing else
    result = run_python(hog, memory_mb=128, timeout_s=10.0, iso=iso)
    assert not result.ok and result.stdout == ""
    grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))"
    result = run_python(grow, memory_mb=128, timeout_s=5.0, iso=iso)
    assert not result.ok and not result.timed_out  # MemoryError, not the clock


def test_output_flood_is_capped(iso):
    flood = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)"
    result = run_python(flood, timeout_s=5.0, iso=iso)
    assert not result.ok and not result.timed_out  # writes past the cap fail: the program dies of its error
    assert 0 < len(result.stdout) <= MAX_OUTPUT_BYTES
    stubborn = "import os\nwhile True:\n    try: os.write(1, b'x' * 65536)\n    except OSError: pass"
    result = run_python(stubborn, timeout_s=0.5, iso=iso)
    assert result.timed_out and 0 < len(result.stdout) <= MAX_OUTPUT_BYTES


def test_fork_storm_is_bounded(iso):
    # first a bounded one: 64 sleeping children must hit the process limit ...
    bounded = """
        import os, time
        n = 0
        for _ in range(64):
            try:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
            except OSError:
                break
            n += 1
        print(n)
    """
    result = run_python(textwrap.dedent(bounded), timeout_s=3.0, iso=iso)
    assert result.ok and 1 <= int(result.stdout) < MAX_PROCS  # and the sleepers are gone (fixture)
    # ... only then the real thing
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = run_python(bomb, timeout_s=1.0, iso=iso)
    assert result.timed_out and not result.ok


def test_callers_environment_is_not_visible(iso, monkeypatch):
    secret = f"hunter2-{uuid.uuid4().hex}"
    monkeypatch.setenv("NANOR1_TEST_SECRET", secret)
    spy = f"""
        import os
        print(dict(os.environ))
        for pid in ({os.getpid()}, os.getppid(), 1):
            try:
                print(open(f"/proc/{{pid}}/environ", "rb").read())
            except OSError as e:
                print("denied", pid, e)
    """
    result = run_python(textwrap.dedent(spy), iso=iso)
    assert result.ok and "PATH" in result.stdout
    assert secret not in result.stdout


def test_no_network(iso):
    if not iso.namespaces:
        pytest.skip("without a network namespace the network is open (documented)")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):  # control: the listener works
            listener.accept()[0].close()
        client = f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=1)
                print("connected")
            except OSError as e:
                print("blocked", e)
        """
        result = run_python(textwrap.dedent(client), iso=iso)
        assert result.ok and result.stdout.startswith("blocked")
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody knocked


def test_callers_files_survive(iso):
    if not os.path.isdir("/var/tmp"):
        pytest.skip("needs /var/tmp, a place the program can see in every mode")
    victim_dir = tempfile.mkdtemp(dir="/var/tmp", prefix="nanor1-victim-")  # 0700
    try:
        victim = Path(victim_dir, "precious.txt")
        victim.write_text("precious")
        victim.chmod(0o600)
        attack = f"""
            import os, shutil
            path = {str(victim)!r}
            attempts = [lambda: os.remove(path), lambda: open(path, "w").write("pwned"),
                        lambda: os.chmod(path, 0o777), lambda: os.truncate(path, 0),
                        lambda: os.rename({victim_dir!r}, {victim_dir!r} + "-gone"),
                        lambda: shutil.rmtree({victim_dir!r})]
            for attempt in attempts:
                try:
                    attempt()
                    print("done")
                except OSError as e:
                    print("refused", e.strerror)
        """
        result = run_python(textwrap.dedent(attack), iso=iso)
        assert result.ok and result.stdout.count("refused") == 6
        assert victim.read_text() == "precious" and victim.stat().st_mode & 0o777 == 0o600
    finally:
        shutil.rmtree(victim_dir)


def test_cannot_signal_the_caller(iso):
    canary = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        attack = f"""
            import os, signal
            for pid in ({os.getpid()}, {canary.pid}, os.getppid(), 1):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError as e:
                    print("refused", pid, e.strerror)
            try:
                os.killpg({os.getpgid(0)}, signal.SIGKILL)
            except OSError as e:
                print("refused group", e.strerror)
            try:
                os.kill(-1, signal.SIGKILL)  # everything it may signal, but itself
            except OSError as e:
                print("nobody to kill", e.strerror)
            print("still here")
        """
        result = run_python(textwrap.dedent(attack), iso=iso)
        assert result.ok and result.stdout.endswith("still here\n")  # the launcher survived too, and reported
        assert canary.poll() is None  # and so did we (or this line would not run)
    finally:
        canary.kill()
        canary.wait()


@pytest.mark.parametrize("then", ["exit", "hang"])
def test_escaped_children_are_killed(iso, then):
    marker = f"nanor1-escapee-{uuid.uuid4().hex}"
    escape = f"""
        import os, sys, time
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:  # double fork: the grandchild is an orphan in its own session
                os.write(w, b"up")
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
            os._exit(0)
        os.read(r, 2)
        print("spawned", flush=True)
        while {then == "hang"}:
            pass
    """
    result = run_python(textwrap.dedent(escape), timeout_s=1.0, iso=iso)
    assert result.stdout == "spawned\n"  # the sleeper was really up ...
    assert result.ok == (then == "exit") and result.timed_out == (then == "hang")
    assert processes_with(marker) == []  # ... and is gone now


def test_fallback_without_root_still_works():
    """Run as an unprivileged user (nobody): user namespaces if allowed, else rlimits and cleanup only."""
    if not ROOT:
        pytest.skip("needs root to switch to another user")
    secret = f"hunter2-{uuid.uuid4().hex}"
    script = f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("sandbox", {sandbox.__file__!r})
        sb = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sb)
        iso = sb.isolation()
        tests = {ADD_TESTS!r}
        print(iso.namespaces, iso.drop_uid)
        print(sb.code_reward({ADD!r}, tests), sb.code_reward("```python\\nprint(3)\\n```", tests))
        print(sb.run_python("import os; print(dict(os.environ))").stdout)
    """
    as_nobody = dict(user=65534, group=65534, extra_groups=[], cwd="/", capture_output=True, text=True)
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]):
        try:
            if subprocess.run([python, "-c", "pass"], **as_nobody).returncode == 0:
                break
        except OSError:
            continue  # not there, or out of nobody's reach (e.g. under /root)
    else:
        pytest.skip("no python that user nobody can run")
    run = subprocess.run(
        [python, "-I", "-c", textwrap.dedent(script)], env={"NANOR1_TEST_SECRET": secret}, timeout=60, **as_nobody
    )
    assert run.returncode == 0, run.stderr
    mode, rewards, env = run.stdout.splitlines()[:3]
    assert mode.split()[1] == "False"  # no uid to drop to
    assert rewards == "1.0 0.5"
    assert "PATH" in env and secret not in env
