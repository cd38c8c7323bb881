"""Code reward: run a model's Python program against stdin/stdout tests, in a sandbox.

R1 trains reasoning with rule-based rewards; for code, "a compiler can be used to generate feedback based on
predefined test cases" (paper Sec. 2.2.2). Here the reward of a completion is the fraction of tests that the LAST
```python fenced block of the completion passes: the program exits with status 0 within the time limit, and its
stdout equals the expected output once trailing whitespace is stripped from every line and from the end. A
completion with no (closed) ```python block gets 0.0. An empty or malformed test list is the caller's bug:
ValueError. Nothing the model writes makes `code_reward` raise.
Deviation: the paper does not say whether passing some of the tests earns anything; we give the fraction (for a
0/1 reward, use `reward == 1.0`).

The program is hostile until proven otherwise. Every test runs it as a fresh `python -I -S main.py` (no
site-packages, no PYTHON* variables) under a trusted launcher: this same file run as `python -I -S sandbox.py
--launch CONFIG`, so the caller never forks with a `preexec_fn` and may call the reward from threads. The launcher,
in the strongest mode the machine allows (`isolation()` probes once):
- limits the program: wall time (SIGKILL at `timeout_s`), RLIMIT_CPU, RLIMIT_AS (`memory_mb` per process),
  RLIMIT_NPROC (`MAX_PROCS` tasks, threads included), RLIMIT_FSIZE (stdout is a file, so this also caps the output
  at MAX_OUTPUT_BYTES: writes past it fail), RLIMIT_CORE 0; stderr goes to /dev/null; no_new_privs (setuid
  binaries give nothing); the environment is PATH only; stdin is the test input;
- as root (the normal case, CI included): runs it as a fresh uid and gid (UID_BASE + launcher pid, no supplementary
  groups) that owns no file and no other process, so it cannot touch the caller's files or processes, and
  RLIMIT_NPROC counts its tasks only;
- with namespaces (root with CAP_SYS_ADMIN, or non-root where unprivileged user namespaces are allowed): gives it
  its own network namespace (no interface up: no network, not even 127.0.0.1), IPC namespace, pid namespace (pid 1
  is a trusted init; the program sees and can signal only its own processes; when init dies the kernel kills them
  all) and mount namespace (every mount read-only, except a fresh MAX_TMPFS_MB tmpfs on /tmp, its cwd, also on
  /dev/shm, gone with it; /run hidden; /proc shows its own processes only);
- cleans up: it is a child subreaper, so every orphan of the program (double fork, setsid) becomes its child. When
  the program ends or times out it freezes all its descendants (SIGSTOP: a fork storm stops growing), kills them,
  reaps them, and only then returns. If the launcher itself were SIGKILLed (the caller does that only when it
  ignores SIGTERM for _LAUNCH_GRACE_S), its child would die with it (PR_SET_PDEATHSIG), with namespaces the whole pid
  namespace; without, grandchildren would survive.

Modes, strongest first: root + namespaces; root without namespaces (e.g. default Docker, which lacks CAP_SYS_ADMIN);
non-root + user namespace; non-root with nothing (limits, empty environment, cleanup). As root the program never
runs as root: if no uid can be dropped to, the first call raises RuntimeError. The program's interpreter is
`sys.executable` when the sandbox uid can run it, else /usr/bin/python3 or /usr/local/bin/python3 (a pyenv or venv
under /root is out of another uid's reach), so its Python version may differ from the caller's.

What the sandbox does NOT protect against:
- kernel exploits (there is no seccomp filter: every syscall is allowed) and CPU side channels (Spectre and kin);
- reading world-readable files: /etc, the repo, your datasets. Keep test cases (their expected outputs) out of its
  reach (mode 0600 in a 0700 directory), or a model can learn to look them up. Likewise it can connect to
  world-writable unix sockets (with namespaces, those outside /tmp and /run);
- totals: limits are per process, so memory can reach MAX_PROCS x memory_mb (plus the tmpfs) and CPU MAX_PROCS
  cores for `timeout_s`; there is no cgroup;
- without namespaces (root in default Docker): the network is open; the program sees other processes in /proc
  (command lines, not environments); it can write to world-writable places (/tmp, /var/tmp, /dev/shm: up to
  MAX_OUTPUT_BYTES per file, as many files as it manages in `timeout_s`) and those files stay;
- non-root modes: the program runs as YOUR uid, so it can read every file you can (~/.ssh included) and connect to
  your unix sockets. With a user namespace it cannot write your files (read-only mounts) nor see or signal your
  processes. Without one it can also write and delete your files, signal your processes (the caller included) and
  escape the cleanup by killing the launcher first; RLIMIT_NPROC is your current task count + MAX_PROCS there.
  For real isolation, train as root in a container.
"""
import ctypes
import json
import math
import os
import re
import resource
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

MAX_OUTPUT_BYTES = 1 << 20  # stdout cap, and the size cap of any file the program writes
CPU_LIMIT_EXIT = 124       # pid 1 of the namespace reports "the program hit its CPU limit" with this code
MAX_PROCS = 16  # tasks (processes + threads) the program may have at once
MAX_TMPFS_MB = 64  # its private /tmp (namespace modes)
UID_BASE = 2_000_000_000  # the program runs as UID_BASE + launcher pid: unique among live sandboxes, no real user
_LAUNCH_GRACE_S = 10.0  # launcher start-up and cleanup, on top of timeout_s, before the parent gives up on it

# launcher exit codes (a crash of the launcher itself exits 1)
_PASSED, _FAILED, _TIMED_OUT, _SETUP_FAILED = 0, 3, 4, 5


# --------------------------------------------------------------------------------------------------------------------
# What the reward compares


def extract_code(completion: str) -> str | None:
    """The code in the last closed ```python block of a completion (```python3 counts too), else None."""
    blocks = re.findall(r"```python[^\n]*\n(.*?)```", completion, flags=re.DOTALL)
    return blocks[-1] if blocks else None


def normalize_output(text: str) -> str:
    """Strip trailing whitespace from every line and from the end (\\r\\n counts as \\n)."""
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


# --------------------------------------------------------------------------------------------------------------------
# The launcher: runs in its own process (`python -I -S sandbox.py --launch CONFIG`), single-threaded, so it may fork.
# It starts as the caller (often root), sets up the isolation, execs the program, enforces the wall time limit and
# kills everything the program started.

# <sched.h>
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 1 << 17, 1 << 27, 1 << 28, 1 << 29, 1 << 30
# <sys/mount.h>
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 1 << 12, 1 << 14, 1 << 18
# <sys/prctl.h>
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38


def _libc_call(name: str, *args) -> None:
    """Call a libc function that returns 0 on success; raise OSError naming it otherwise."""
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}{args}: {os.strerror(errno)}")


def _prctl(option: int, value: int) -> None:
    _libc_call("prctl", option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731 (None is NULL)
    _libc_call("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


def _enter_namespaces(as_root: bool) -> None:
    """New pid (for our children), network and IPC namespaces; without root, in a new user namespace granting them."""
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | (0 if as_root else CLONE_NEWUSER)
    _libc_call("unshare", flags)
    if not as_root:
        # map our uid to itself, not to 0: the program (exec'ed as a non-zero uid) then loses the namespace's caps
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def _mount_points() -> list[tuple[str, int]]:
    """(mount point, nosuid/nodev/noexec flags to keep) for every mount we can see, parents first."""
    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()  # id parent major:minor root MOUNT_POINT OPTIONS ...
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])  # "\040" is a space
        mounts.append((target, sum(keep.get(opt, 0) for opt in fields[5].split(","))))
    return mounts


def _private_filesystem(tmpfs_mb: int) -> None:
    """A new mount namespace: everything read-only, a fresh tmpfs /tmp (and /dev/shm), no /run, our /proc."""
    _libc_call("unshare", CLONE_NEWNS)  # here in pid 1, not in the launcher, whose view must stay the host's
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    for target, flags in _mount_points():
        # a bind remount changes this mount's flags only; keep nosuid/nodev/noexec, or they would be cleared
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=1777")
    if os.path.isdir("/dev/shm"):
        _mount("/tmp", "/dev/shm", None, MS_BIND)  # same tmpfs, same size budget
    if os.path.isdir("/run"):  # sockets of system services (D-Bus, ...)
        _mount("tmpfs", "/run", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # we are pid 1 of the new pid namespace


def _tasks_of(uid: int) -> int:
    """Tasks (threads included, as RLIMIT_NPROC counts them) that `uid` owns now."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue  # gone already
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid:
            count += int(fields["Threads"])
    return count


def _die_with_launcher(alive_r: int) -> None:
    """SIGKILL this process when the launcher dies. EOF on alive_r means it died before the prctl took effect."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if select.select([alive_r], [], [], 0)[0]:
        os._exit(1)


def _exec_program(cfg: dict, code: bytes, cwd: str, uid: int, alive_r: int | None) -> None:
    """Become the program: limits, then the sandbox uid, then exec. Never returns."""
    os.chdir(cwd)
    if cfg["namespaces"]:
        Path("main.py").write_bytes(code)  # into the fresh tmpfs
    elif cfg["drop_uid"]:
        os.chown(cwd, uid, uid)  # the 0700 workdir becomes the program's own
    nproc = MAX_PROCS + (0 if cfg["drop_uid"] else _tasks_of(uid))  # a fresh uid owns nothing yet
    cpu_s = math.ceil(cfg["timeout_s"])
    for limit, value in [
        (resource.RLIMIT_AS, cfg["memory_mb"] << 20),
        (resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),  # SIGXCPU at soft, SIGKILL at hard
        (resource.RLIMIT_NPROC, nproc),
        (resource.RLIMIT_FSIZE, MAX_OUTPUT_BYTES),
        (resource.RLIMIT_CORE, 0),
    ]:
        resource.setrlimit(limit, value if isinstance(value, tuple) else (value, value))
    if cfg["drop_uid"]:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # real, effective and saved: there is no way back
        assert os.getresuid() == (uid, uid, uid) and os.getresgid() == (uid, uid, uid)
    if alive_r is not None:
        _die_with_launcher(alive_r)  # after setuid, which clears the parent-death signal
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    # the error pipe is close-on-exec: from here on the launcher reads EOF, the sign that setup succeeded
    os.execve(cfg["python"], [cfg["python"], "-I", "-S", "main.py"], {"PATH": "/usr/bin:/bin"})


def _init(cfg: dict, code: bytes, uid: int, alive_r: int, errors_w: int) -> None:
    """Pid 1 of the new pid namespace (trusted, stays root there): file system, then the program. Never returns."""
    _die_with_launcher(alive_r)
    _private_filesystem(MAX_TMPFS_MB)
    program = os.fork()
    if program == 0:
        _exec_program(cfg, code, "/tmp", uid, alive_r=None)
    os.close(errors_w)
    _, status = os.waitpid(program, 0)
    cpu_limit = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU
    os._exit(0 if status == 0 else CPU_LIMIT_EXIT if cpu_limit else 1)  # the kernel now kills the rest


def _descendants() -> set[int]:
    """Pids of all our descendants (as a subreaper, orphans of the program stay among them)."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # gone already
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])  # "pid (comm) state ppid ...", comm may hold ")"
        children.setdefault(ppid, []).append(int(pid))
    found, todo = set(), [os.getpid()]
    while todo:
        kids = children.get(todo.pop(), [])
        found.update(kids)
        todo += kids
    return found


def _signal(pids: set[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _kill_descendants() -> None:
    """Kill and reap everything the program started. A fork storm regrows faster than it can be killed one
    generation at a time, so first freeze it: a stopped process cannot fork, and RLIMIT_NPROC bounds the rounds."""
    while True:
        frozen: set[int] = set()
        while new := _descendants() - frozen:
            _signal(new, signal.SIGSTOP)
            frozen |= new
        _signal(_descendants(), signal.SIGKILL)  # re-listed: never signal a pid that may have been reused
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass  # reap the dead
        except ChildProcessError:
            return  # no child left
        time.sleep(0.001)


def _launch(cfg: dict) -> int:
    """The launcher's main: run the program once, return one of the _PASSED.._SETUP_FAILED exit codes."""
    code = Path(cfg["workdir"], "main.py").read_bytes()
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        if cfg["namespaces"]:
            _enter_namespaces(as_root=cfg["drop_uid"])
    except OSError as e:
        print(e, file=sys.stderr)
        return _SETUP_FAILED
    uid = UID_BASE + os.getpid() if cfg["drop_uid"] else os.getuid()
    errors_r, errors_w = os.pipe()  # setup errors of the child come back here (both ends close-on-exec)
    alive_r, alive_w = os.pipe()  # we never write: the child sees EOF when we are gone
    child = os.fork()
    if child == 0:
        try:
            os.close(errors_r)
            os.close(alive_w)
            if cfg["namespaces"]:
                _init(cfg, code, uid, alive_r, errors_w)
            else:
                _exec_program(cfg, code, cfg["workdir"], uid, alive_r)
        except BaseException as e:  # noqa: BLE001 (report whatever broke the setup)
            os.write(errors_w, f"{type(e).__name__}: {e}".encode())
        os._exit(1)
    os.close(errors_w)
    os.close(alive_r)

    timed_out = False

    def stop(signum, _frame):
        nonlocal timed_out
        timed_out |= signum == signal.SIGALRM
        os.kill(child, signal.SIGKILL)  # safe: the child is not reaped before these handlers are removed

    signal.signal(signal.SIGTERM, stop)  # the parent gives up, or is interrupted
    signal.signal(signal.SIGALRM, stop)
    error = os.read(errors_r, 4096)  # b"" once the program was exec'ed
    if not error:
        signal.setitimer(signal.ITIMER_REAL, cfg["timeout_s"])
    os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)  # wait, but keep the pid reserved ...
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    _, status = os.waitpid(child, 0)  # ... until no handler can kill it any more
    _kill_descendants()
    if error:
        print(error.decode(errors="replace"), file=sys.stderr)
        return _SETUP_FAILED
    # the CPU limit (SIGXCPU) can fire just before the wall-clock alarm: both are a timeout
    timed_out |= os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU  # the program itself
    timed_out |= os.WIFEXITED(status) and os.WEXITSTATUS(status) == CPU_LIMIT_EXIT and cfg["namespaces"]  # via pid 1
    return _TIMED_OUT if timed_out else _PASSED if status == 0 else _FAILED


# --------------------------------------------------------------------------------------------------------------------
# The parent side: start the launcher, collect the result. Threads are fine here (no fork, no preexec_fn).


@dataclass(frozen=True)
class Isolation:
    namespaces: bool  # own mount/pid/net/IPC namespaces: no network, read-only file system, private /tmp
    drop_uid: bool  # the program runs as a fresh unprivileged uid (only possible when we are root)
    python: str  # the interpreter the program runs under


@dataclass(frozen=True)
class RunResult:
    ok: bool  # exited with status 0 within the time limit
    stdout: str  # at most MAX_OUTPUT_BYTES, decoded as UTF-8 (bad bytes replaced)
    timed_out: bool


def _run(iso: Isolation, code: str, stdin: str, timeout_s: float, memory_mb: int) -> RunResult:
    """Run `code` once under the launcher; RuntimeError if the sandbox could not be set up."""
    if not (timeout_s > 0 and memory_mb > 0):  # a zero timer would mean no wall limit at all
        raise ValueError(f"timeout_s and memory_mb must be positive, got {timeout_s} and {memory_mb}")
    with (
        tempfile.TemporaryDirectory(prefix="nanor1-sandbox-", ignore_cleanup_errors=True) as workdir,
        tempfile.TemporaryFile() as inp,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        Path(workdir, "main.py").write_bytes(code.encode("utf-8", errors="replace"))  # lone surrogates -> "?"
        inp.write(stdin.encode())
        inp.seek(0)
        cfg = dict(workdir=workdir, timeout_s=float(timeout_s), memory_mb=int(memory_mb), **vars(iso))
        # stdout is a file, not a pipe: RLIMIT_FSIZE caps it and nobody has to drain it
        launcher = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), "--launch", json.dumps(cfg)],
            stdin=inp, stdout=out, stderr=err, cwd=workdir, env={}, start_new_session=True,
        )  # fmt: skip
        try:
            status = launcher.wait(timeout=timeout_s + _LAUNCH_GRACE_S)
        except subprocess.TimeoutExpired:
            status = _TIMED_OUT  # only on a hopelessly overloaded machine
        finally:
            if launcher.poll() is None:  # SIGTERM first: the launcher then kills the program and all it started
                launcher.terminate()
                try:
                    launcher.wait(timeout=_LAUNCH_GRACE_S)
                except subprocess.TimeoutExpired:
                    launcher.kill()  # its child dies with it (parent-death signal)
                    launcher.wait()
        if status not in (_PASSED, _FAILED, _TIMED_OUT):
            err.seek(0)
            message = err.read(4096).decode(errors="replace").strip()
            what = "setup failed" if status == _SETUP_FAILED else f"launcher crashed (exit {status})"
            raise RuntimeError(f"sandbox {what} with {iso}: {message}")
        out.seek(0)
        stdout = out.read(MAX_OUTPUT_BYTES).decode(errors="replace")
        return RunResult(ok=status == _PASSED, stdout=stdout, timed_out=status == _TIMED_OUT)


def _probe() -> Isolation:
    """The strongest isolation that works here, tried by running a one-line program in each, strongest first."""
    pythons = dict.fromkeys(
        os.path.realpath(p) for p in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3") if os.path.isfile(p)
    )
    as_root = os.geteuid() == 0  # as root, always drop the uid: never run the program as root
    errors = []
    for namespaces in (True, False):
        for python in pythons:
            iso = Isolation(namespaces=namespaces, drop_uid=as_root, python=python)
            try:
                result = _run(iso, "print('ok')", "", timeout_s=10.0, memory_mb=256)
            except RuntimeError as e:
                errors.append(str(e))
                continue
            if result.stdout == "ok\n":
                return iso
            errors.append(f"{iso}: probe program failed")
    raise RuntimeError("no working sandbox on this machine:\n" + "\n".join(errors))


_isolation: Isolation | None = None
_isolation_lock = threading.Lock()


def isolation() -> Isolation:
    """The isolation every run uses, probed on first use (RuntimeError if there is none that works)."""
    global _isolation
    with _isolation_lock:
        if _isolation is None:
            _isolation = _probe()
        return _isolation


def run_python(
    code: str, stdin: str = "", *, timeout_s: float = 2.0, memory_mb: int = 512, iso: Isolation | None = None
) -> RunResult:
    """Run a Python program once in the sandbox (iso=None: the strongest available, see `isolation()`)."""
    return _run(iso or isolation(), code, stdin, timeout_s, memory_mb)


# --------------------------------------------------------------------------------------------------------------------
# The reward


def _check_tests(tests: list[dict]) -> None:
    if not isinstance(tests, list) or not tests:
        raise ValueError(f"tests must be a non-empty list of {{'input', 'output'}} dicts, got {tests!r:.100}")
    for i, test in enumerate(tests):
        if not (isinstance(test, dict) and isinstance(test.get("input"), str) and isinstance(test.get("output"), str)):
            raise ValueError(f"test {i} must be a dict with str 'input' and 'output', got {test!r:.100}")


def code_reward(completion: str, tests: list[dict], *, timeout_s: float = 2.0, memory_mb: int = 512) -> float:
    """Fraction of stdin/stdout tests passed by the last ```python block of `completion` (0.0 without one).

    Each test runs the program afresh, one after the other, in the sandbox. ValueError on an empty or malformed test
    list (the caller's bug); RuntimeError if this machine cannot sandbox at all (first call). Never raises on
    anything the model wrote.
    """
    _check_tests(tests)
    code = extract_code(completion)
    if code is None:
        return 0.0
    passed = 0
    for test in tests:
        result = run_python(code, test["input"], timeout_s=timeout_s, memory_mb=memory_mb)
        passed += result.ok and normalize_output(result.stdout) == normalize_output(test["output"])
    return passed / len(tests)


def code_rewards(
    completions: list[str],
    tests: list[list[dict]],
    *,
    timeout_s: float = 2.0,
    memory_mb: int = 512,
    max_workers: int = 4,
) -> list[float]:
    """`code_reward` of each completion against its own tests, `max_workers` completions at a time (threads)."""
    if len(completions) != len(tests):
        raise ValueError(f"{len(completions)} completions but {len(tests)} test lists")
    for t in tests:
        _check_tests(t)  # before anything runs
    reward = lambda c, t: code_reward(c, t, timeout_s=timeout_s, memory_mb=memory_mb)  # noqa: E731
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(reward, completions, tests))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--launch"]:  # we are the launcher of one run
        sys.exit(_launch(json.loads(sys.argv[2])))
    print(isolation())
    tests = [{"input": "1 2\n", "output": "3"}, {"input": "5 7\n", "output": "12\n"}]
    for completion in [
        "Add them.\n```python\na, b = map(int, input().split())\nprint(a + b)\n```",
        "Oops.\n```python\nprint(3)\n```",
        "```python\nimport os\nprint(os.environ)\n```",
        "```python\nwhile True: pass\n```",
        "no code here",
    ]:
        print(f"{code_reward(completion, tests, timeout_s=0.5):.2f}  {completion[-40:]!r}")
