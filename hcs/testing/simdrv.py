"""The simulated driver (driver/build/bin/hcs-simdrv), serving device nodes over FUSE for tests and bench/."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def stop_simdrv(drv: subprocess.Popen[str], mnt: Path) -> None:
    """Stop a simulated driver serving the device nodes at ``mnt`` (killed after 10 s) and make sure the
    FUSE mount is gone (a lazy unmount when the driver left it behind)."""
    drv.terminate()
    try:
        drv.wait(10)
    except subprocess.TimeoutExpired:
        drv.kill()
        drv.wait()
    if os.path.ismount(mnt):
        subprocess.run(["umount", "-l", str(mnt)], check=False)
