"""The baseline: a plain paramiko script, the way one would write it by hand.

    python bench/baseline_paramiko.py SPEC.json

A thread pool with one worker per host; per host one SSH connection (host key
checked against known_hosts, RejectPolicy), one SFTP session: create the
directories, then for each file read the remote copy and its mode, compare, and
only if different write a temp file beside it (mode set before the content),
rename it over the target (posix-rename); if anything changed run the restart
command. No TCP_NODELAY tuning, no batching: plain library defaults
(shared/testing.md "Measured here", issue 5).

SPEC: {"workers": N, "key": PATH, "known_hosts": PATH, "restart": CMD,
       "dirs": [PATH...], "hosts": [{"name", "address", "port",
       "files": [{"path", "src", "mode"}]}]}
"""

from __future__ import annotations

import json
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import paramiko


def deploy(spec: dict[str, Any], pkey: paramiko.PKey, host: dict[str, Any]) -> tuple[str, bool]:
    client = paramiko.SSHClient()
    client.load_host_keys(spec["known_hosts"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host["address"], port=host["port"], username="root", pkey=pkey,
                   allow_agent=False, look_for_keys=False, timeout=30)
    try:
        sftp = client.open_sftp()
        for d in spec["dirs"]:
            try:
                sftp.stat(d)
            except FileNotFoundError:
                sftp.mkdir(d, 0o755)
        changed = False
        for f in host["files"]:
            with open(f["src"], "rb") as fh:
                want = fh.read()
            mode = int(f["mode"], 8)
            try:
                st = sftp.stat(f["path"])
                with sftp.open(f["path"], "rb") as rf:
                    have = rf.read()
            except FileNotFoundError:
                st, have = None, None
            if have == want and st is not None and stat.S_IMODE(st.st_mode or 0) == mode:
                continue
            tmp = f["path"] + ".tmp"
            with sftp.open(tmp, "wb") as wf:
                wf.chmod(mode)
                wf.write(want)
            sftp.posix_rename(tmp, f["path"])
            changed = True
        sftp.close()
        if changed:
            _, out, err = client.exec_command(spec["restart"])
            status = out.channel.recv_exit_status()
            if status != 0:
                raise RuntimeError(f"{host['name']}: restart exited {status}: {err.read()!r}")
        return host["name"], changed
    finally:
        client.close()


def main(argv: list[str]) -> int:
    with open(argv[1]) as fh:
        spec = json.load(fh)
    pkey = paramiko.PKey.from_path(spec["key"])
    with ThreadPoolExecutor(max_workers=spec["workers"]) as pool:
        futures = [pool.submit(deploy, spec, pkey, h) for h in spec["hosts"]]
        failed = 0
        changed = 0
        for fut in futures:
            try:
                _, did = fut.result()
                changed += did
            except Exception as exc:
                failed += 1
                print(f"error: {exc!r}", file=sys.stderr)
    print(f"{len(futures) - failed} ok, {changed} changed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
