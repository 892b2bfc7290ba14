"""Process handling shared by the deployment checks (wiring.py, live.py)."""
import os
import signal
import subprocess
import time


def stop_groups(groups, grace_s=5.0):
    """SIGTERM each group of process-group leaders (subprocess.Popen started with
    start_new_session=True) in turn, waiting up to `grace_s` for each group; then SIGKILL
    whatever is left of every group."""
    for group in groups:
        for p in group:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        for p in group:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for group in groups:
        for p in group:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def sourced_env(root, script):
    """The environment after `bash -c script` (which sources Troupe's scripts, its output sent to
    stderr) in `root`; None and the stderr tail if it failed."""
    r = subprocess.run(["bash", "-c", script + " && env -0", "bash", root], capture_output=True)
    if r.returncode != 0:
        return None, r.stderr.decode(errors="replace")[-2000:]
    env = {}
    for item in r.stdout.decode(errors="replace").split("\0"):
        if "=" in item and not item.startswith("BASH_FUNC_"):
            k, v = item.split("=", 1)
            env[k] = v
    return env, ""
