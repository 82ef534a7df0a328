"""One bubblewrap sandbox per submission: the student's kernel runs here and nowhere else.

What the kernel sees (everything else of the machine is simply absent):

- read-only: ``/usr`` (and the ``/lib*``, ``/bin`` links), a minimal ``/etc``, the Python
  interpreter, the virtual environment, the ``segcourse`` package and the course's shipped
  checkpoints;
- read-write, all on one private tmpfs of ``Limits.disk`` bytes: its home with the working
  folder (the submitted files and the files its release ships), ``/tmp`` and the results folder
  where ``grading.check`` saves outputs; and, on a tiny tmpfs of its own under a short path (a
  Unix socket's path may not exceed 107 bytes), the folder of its connection file and IPC
  sockets, seen inside as ``/run/kernel``;
- its own PID, IPC, UTS, network (loopback only, nothing else) and cgroup namespaces, a new
  session (no terminal injection), a clean environment, and an unprivileged user with no
  capabilities: when the grader runs as root, a real unused uid (``SANDBOX_UID_BASE`` + slot, so
  that the process limit counts this sandbox alone); otherwise bubblewrap's user namespace maps
  the grader's own uid to ``nobody``.

Not visible at all: hidden references, instructor notebooks, the gradebook, other submissions,
the CSV, the repository (only the package folder, read-only), the grader's environment
variables, other kernels' connection files.

Limits (``setrlimit`` through ``prlimit``): address space, processes, file size, open files,
CPU seconds, no core dumps; the wall-clock cap on the whole notebook is enforced by the grader
(``SafeExecute``). When the sandbox ends, its PID namespace ends, which ends every process in
it (detached ones included); ``close`` also kills anything left with the sandbox's uid and
removes the scratch (unmounting the tmpfs). ``--die-with-parent`` ends the sandbox if the
grader dies.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Limits", "Sandbox", "SandboxUnavailable", "find_bwrap", "sandbox_problem",
           "SANDBOX_UID_BASE", "claim_slot", "orphaned_processes"]

SANDBOX_UID_BASE = 61000  # uids 61000.. are used for sandboxes when the grader is root
MAX_SLOTS = 256           # sandboxes that may run at once on this machine
SLOT_LOCKS = Path("/tmp/segcourse-sandbox-slots")  # slot N is ours while we hold N.lock
INSIDE_HOME = "/home/student"
INSIDE_WORK = f"{INSIDE_HOME}/work"
INSIDE_RESULTS = "/results"
INSIDE_CONN = "/run/kernel"  # the connection file and IPC sockets, as the kernel sees them
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `sudo apt-get install bubblewrap`; "
                "Fedora: `sudo dnf install bubblewrap`), or grade without a sandbox with "
                "`segcourse grade --no-sandbox` (every row is then marked unsandboxed)")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here."""


@dataclass
class Limits:
    """Per-submission limits. ``None`` or 0 means unlimited.

    The defaults fit the course's training cells (a notebook takes at most 3 CPU minutes on a
    2-core laptop; grading runs each cell to completion on the grader's cores).
    """

    memory: int = 8 * 2**30      # address space of each process, bytes (torch maps ~4 GB of libraries)
    processes: int = 256         # processes and threads of the sandbox's user
    file_size: int = 1 * 2**30   # largest file it may write, bytes
    disk: int = 2 * 2**30        # everything it writes, together (tmpfs size, root only)
    cpu: int = 3600              # CPU seconds of one process (all its threads)
    wall: int = 1200             # seconds for the whole notebook, crash retries included
    open_files: int = 1024

    def prlimit_args(self) -> list[str]:
        pairs = [("--as", self.memory), ("--nproc", self.processes), ("--fsize", self.file_size),
                 ("--cpu", self.cpu), ("--nofile", self.open_files), ("--core", 0)]
        args = []
        for flag, value in pairs:
            if value or flag == "--core":
                args.append(f"{flag}={value}")
        return args


@contextmanager
def claim_slot():
    """A sandbox slot (and so a uid) no other grader on this machine is using, held until the
    block ends: two graders at once (two courses, or CI running two test files) never share a
    uid, so cleaning up one never kills the other's kernels."""
    SLOT_LOCKS.mkdir(mode=0o755, parents=True, exist_ok=True)
    for slot in range(MAX_SLOTS):
        handle = open(SLOT_LOCKS / f"{slot}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield slot
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        return
    raise SandboxUnavailable(f"all {MAX_SLOTS} sandbox slots are in use on this machine")


def _slot_in_use(slot: int) -> bool:
    path = SLOT_LOCKS / f"{slot}.lock"
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _processes_by_uid() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            line = next(x for x in status.read_text().splitlines() if x.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        found.setdefault(int(line.split()[1]), []).append(int(status.parent.name))
    return found


def orphaned_processes() -> list[int]:
    """Processes running as a sandbox uid whose slot no grader holds: left behind."""
    orphans = []
    for uid, pids in _processes_by_uid().items():
        slot = uid - SANDBOX_UID_BASE
        if 0 <= slot < MAX_SLOTS and not _slot_in_use(slot):
            orphans += pids
    return sorted(orphans)


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def sandbox_problem() -> str | None:
    """``None`` when a sandbox can be made here, else one sentence saying why not and the fix."""
    bwrap = find_bwrap()
    if bwrap is None:
        return f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}"
    probe = [bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net", "--die-with-parent"]
    if os.geteuid() != 0:
        probe.append("--unshare-user")
    done = subprocess.run([*probe, "--", "true"], capture_output=True, text=True)
    if done.returncode != 0:
        return (f"bubblewrap cannot create namespaces here ({done.stderr.strip()[:200]}); "
                "enable unprivileged user namespaces or grade as root, or use --no-sandbox")
    return None


def _python_roots() -> list[Path]:
    """Folders the kernel's Python needs: the interpreter's prefix and the environment's."""
    roots = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    executable = Path(sys.executable)
    roots.add(executable.parent.resolve())
    roots.add(executable.resolve().parent.parent)
    return sorted(roots)


def _mounts_under(folder: Path) -> list[str]:
    """Mount points at or below ``folder``, deepest first (from /proc/self/mounts)."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    base = str(folder.resolve()) if folder.exists() else str(folder)
    points = [line.split()[1].replace("\\040", " ") for line in lines if len(line.split()) > 1]
    inside = [p for p in points if p == base or p.startswith(base + "/")]
    return sorted(set(inside), key=len, reverse=True)


def _in_mount_order(binds: list[str]) -> list[str]:
    """The mounts sorted shallowest first, each preceded by the folders above it.

    A mount hides whatever was mounted below its target before it (a course kept under /tmp
    would vanish behind the sandbox's own /tmp), so shallow targets go first. bubblewrap makes
    the folders above a mount point with mode 0700, which the sandbox's user could not enter:
    they are made first, world-traversable (they hold nothing else).
    """
    triples = list(zip(binds[::3], binds[1::3], binds[2::3], strict=True))
    triples.sort(key=lambda triple: triple[2].rstrip("/").count("/"))
    targets = {target for _, _, target in triples}
    made: set[str] = set()
    args: list[str] = []
    for flag, source, target in triples:
        for parent in sorted((str(p) for p in Path(target).parents), key=len):
            if parent != "/" and parent not in targets and parent not in made:
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += [flag, source, target]
    return args


def _package_dir() -> Path:
    import segcourse

    return Path(segcourse.__file__).resolve().parent


ETC_FILES = ["ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf",
             "alternatives", "fonts", "mime.types", "hosts"]


@dataclass
class Sandbox:
    """A scratch folder and the bubblewrap command that runs a kernel over it.

    ``Sandbox(scratch, slot).prepare(files)`` makes the scratch (a tmpfs of ``limits.disk``
    bytes when run as root) with ``home/work`` holding ``files``; ``command(argv)`` wraps a
    kernel command line; ``close()`` ends every process and removes the scratch.
    """

    scratch: Path
    slot: int = 0
    limits: Limits = field(default_factory=Limits)
    threads: int = 1

    @property
    def uid(self) -> int:
        return SANDBOX_UID_BASE + self.slot if os.geteuid() == 0 else os.getuid()

    @property
    def conn(self) -> Path:
        """The folder of the connection file and the IPC sockets: a short path of its own under
        /tmp (linked from the scratch), because a Unix socket's path may not exceed 107 bytes."""
        link = self.scratch / "conn"
        return Path(os.readlink(link)) if link.is_symlink() else link

    @property
    def results(self) -> Path:
        return self.scratch / "results"

    # -- lifecycle ---------------------------------------------------------------------------

    def prepare(self, files: list[Path]) -> Sandbox:
        self.scratch.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and self.limits.disk:
            options = f"size={self.limits.disk},mode=0700,uid={self.uid},gid={self.uid}"
            # without it (not allowed here) the scratch is a plain folder: only --file-size holds
            subprocess.run(["mount", "-t", "tmpfs", "-o", options, "segcourse-sandbox",
                            str(self.scratch)], capture_output=True)
        for sub in ("home/work", "tmp", "results", "etc"):
            (self.scratch / sub).mkdir(parents=True, exist_ok=True)
        short = tempfile.mkdtemp(prefix="sgc-", dir="/tmp" if Path("/tmp").is_dir() else None)
        (self.scratch / "conn").symlink_to(short)
        if os.geteuid() == 0:
            # a tiny tmpfs of its own: sockets take no space, and the kernel must not be able to
            # fill the grader's /tmp through the one folder outside its disk cap
            options = f"size=1m,nr_inodes=64,mode=0700,uid={self.uid},gid={self.uid}"
            subprocess.run(["mount", "-t", "tmpfs", "-o", options, "segcourse-sandbox", short],
                           capture_output=True)
            os.chown(short, self.uid, self.uid)
        for path in files:
            target = self.scratch / "home" / "work" / path.name
            if path.is_dir():
                shutil.copytree(path, target, symlinks=False, dirs_exist_ok=True)
            elif path.is_file():
                shutil.copy(path, target)
        (self.scratch / "etc" / "passwd").write_text(
            f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"student:x:{self.uid}:{self.uid}:student:{INSIDE_HOME}:/usr/sbin/nologin\n")
        (self.scratch / "etc" / "group").write_text(f"root:x:0:\nstudent:x:{self.uid}:\n")
        if os.geteuid() == 0:
            for path in [self.scratch, *self.scratch.rglob("*")]:
                os.lchown(path, self.uid, self.uid)
        self.scratch.chmod(0o700)
        return self

    def close(self) -> None:
        """End every process of the sandbox and remove its scratch (and any tmpfs under it)."""
        self.kill_leftovers()
        for link in [self.scratch / "conn", *self.scratch.glob("attempt*/conn")]:
            if link.is_symlink():
                short = os.readlink(link)
                for mount in _mounts_under(Path(short)):
                    subprocess.run(["umount", mount], capture_output=True)
                shutil.rmtree(short, ignore_errors=True)
        for mount in _mounts_under(self.scratch):
            for _ in range(5):
                if subprocess.run(["umount", mount], capture_output=True).returncode == 0:
                    break
                time.sleep(0.2)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def kill_leftovers(self) -> int:
        """SIGKILL every process running as this sandbox's uid (root mode); returns how many."""
        if os.geteuid() != 0:
            return 0
        killed = 0
        for pid in _processes_by_uid().get(self.uid, []):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        return killed

    # -- the command -------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The kernel's whole environment: nothing of the grader's leaks in."""
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": INSIDE_HOME,
            "USER": "student",
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "MPLCONFIGDIR": "/tmp/matplotlib",
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
            "PYTHONDONTWRITEBYTECODE": "1",
            "SEGCOURSE_RESULTS_DIR": INSIDE_RESULTS,
            "SEGCOURSE_DEVICE": "cpu",
        }
        package_parent = str(_package_dir().parent)
        if package_parent in os.environ.get("PYTHONPATH", "").split(os.pathsep):
            env["PYTHONPATH"] = package_parent  # a source checkout on PYTHONPATH, as outside
        return env

    def _binds(self) -> list[str]:
        args = ["--ro-bind", "/usr", "/usr"]
        for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            target = Path("/") / link
            if target.is_symlink():
                args += ["--symlink", os.readlink(target), f"/{link}"]
            elif target.exists():
                args += ["--ro-bind", str(target), f"/{link}"]
        for name in ETC_FILES:
            if (Path("/etc") / name).exists():
                args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        args += ["--ro-bind", str(self.scratch / "etc" / "passwd"), "/etc/passwd",
                 "--ro-bind", str(self.scratch / "etc" / "group"), "/etc/group"]
        for root in _python_roots():
            args += ["--ro-bind", str(root), str(root)]
        package = _package_dir()
        args += ["--ro-bind", str(package), str(package)]
        checkpoints = package.parent / "data" / "checkpoints"
        if checkpoints.is_dir():
            args += ["--ro-bind", str(checkpoints), str(checkpoints)]
        args += ["--bind", str(self.scratch / "home"), INSIDE_HOME,
                 "--bind", str(self.scratch / "tmp"), "/tmp",
                 "--bind", str(self.results), INSIDE_RESULTS,
                 "--bind", str(self.conn), INSIDE_CONN]
        return _in_mount_order(args)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` (a kernel command line) run inside the sandbox, with the limits."""
        bwrap = find_bwrap()
        if bwrap is None:
            raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
        namespaces = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                      "--unshare-cgroup-try", "--hostname", "sandbox"]
        if os.geteuid() == 0:
            drop = ["/usr/bin/setpriv", f"--reuid={self.uid}", f"--regid={self.uid}",
                    "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                    "--no-new-privs", "--"]
        else:
            namespaces += ["--unshare-user", "--uid", "65534", "--gid", "65534"]
            drop = []
        env = []
        for key, value in self.environment().items():
            env += ["--setenv", key, value]
        return [
            bwrap, *namespaces, "--die-with-parent", "--new-session", "--clearenv", *env,
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/run", *self._binds(),
            "--chdir", INSIDE_WORK, "--",
            "/usr/bin/prlimit", *self.limits.prlimit_args(), "--", *drop, *argv,
        ]
