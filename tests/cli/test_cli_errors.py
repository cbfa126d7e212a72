"""Every way a user can get a command wrong ends in one clear line and a non-zero exit, never a traceback.

Each case runs the real installed entry point (``.venv/bin/hcs``, or ``bench/replay.py``) as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HCS = Path(sys.executable).with_name("hcs")
SIM_BUILT = (ROOT / "driver/build/lib/libnvidia-ml.so.1").exists()
needs_sim = pytest.mark.skipif(not SIM_BUILT, reason="simulated drivers not built (run `make dev`)")


def hcs(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HCS_", "KUBECONFIG"))}
    full_env.update(env or {})
    return subprocess.run([str(HCS), *args], capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=ROOT)


def one_line_error(res: subprocess.CompletedProcess[str], *needles: str, max_lines: int = 1) -> str:
    """The run failed with a non-zero exit and at most ``max_lines`` lines on stderr, no traceback."""
    err_lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0, (res.returncode, res.stdout[-500:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr
    assert 1 <= len(err_lines) <= max_lines, res.stderr
    last = err_lines[-1]
    for needle in needles:
        assert needle in last, (needle, last)
    return last


def test_entry_point_is_installed() -> None:
    assert HCS.is_file(), f"{HCS} missing: run `make dev`"


# ----------------------------------------------------------------------------- closed pipes


@needs_sim
@pytest.mark.parametrize("fmt", ["table", "json", "yaml"])
def test_closed_pipe_is_one_line_not_a_traceback(fmt: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCS_")}
    proc = subprocess.Popen([str(HCS), "inspect", "--profile", "t4-pcie-4", "-o", fmt], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written, as with `| head` on a long output
    err = proc.stderr.read()
    rc = proc.wait(timeout=120)
    assert rc == 141, (rc, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["hcs inspect: output closed early (broken pipe); the rest was not written"], err


# ----------------------------------------------------------------------------- kubeconfig


def test_explain_with_missing_kubeconfig() -> None:
    res = hcs("alloc", "explain", "x", "--kubeconfig", "/nonexistent/kubeconfig")
    one_line_error(res, "--kubeconfig /nonexistent/kubeconfig", "no such file")


def test_explain_with_missing_kubeconfig_from_env() -> None:
    res = hcs("alloc", "explain", "x", env={"KUBECONFIG": "/nonexistent/kc"})
    one_line_error(res, "KUBECONFIG /nonexistent/kc", "no such file")


@pytest.mark.parametrize("content", [b"apiVersion: v1\nclusters: [\n  - {a: b\n", b"\xff\xfe\x00garbage\x80\x81",
                                     b"{}\n", b"- just\n- a list\n"],
                         ids=["yaml-syntax", "binary", "empty-mapping", "list"])
def test_explain_with_malformed_kubeconfig(tmp_path: Path, content: bytes) -> None:
    kc = tmp_path / "kubeconfig"
    kc.write_bytes(content)
    one_line_error(hcs("alloc", "explain", "x", "--kubeconfig", str(kc)), "not a usable kubeconfig", "kubectl")


# ----------------------------------------------------------------------------- replay inputs


@pytest.fixture()
def trace(tmp_path: Path) -> tuple[Path, Path]:
    nodes = tmp_path / "nodes.csv"
    pods = tmp_path / "pods.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\n" + "".join(f"n{i},64000,262144,8,V100M32\n"
                                                                     for i in range(4)))
    pods.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n" + "".join(f"p{i},4000,8192,1,{250 + i * 50}\n"
                                                                              for i in range(12)))
    return nodes, pods


def test_replay_binary_csv(tmp_path: Path, trace: tuple[Path, Path]) -> None:
    binary = tmp_path / "bin.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    res = hcs("replay", "--nodes", str(binary), "--pods", str(trace[1]), "--seeds", "1")
    one_line_error(res, str(binary), "not a text CSV file")


def test_replay_unknown_weight_and_bad_number(trace: tuple[Path, Path]) -> None:
    nodes, pods = trace
    one_line_error(hcs("replay", "--nodes", str(nodes), "--pods", str(pods), "--weight", "nosuch=2"),
                   "'nosuch' is not a weight of policy hcs", "strand")
    one_line_error(hcs("replay", "--nodes", str(nodes), "--pods", str(pods), "--weight", "strand=x"),
                   "expected KEY=NUMBER")
    one_line_error(hcs("replay", "--nodes", str(nodes), "--pods", str(pods), "--policy", "fgd", "--weight",
                       "strand=2"), "policy hcs")


def test_replay_unwritable_plot_fails_before_reading_the_trace() -> None:
    # the traces do not exist either: the --plot error proves the path is checked before any work
    res = hcs("replay", "--nodes", "/nonexistent/n.csv", "--pods", "/nonexistent/p.csv", "--plot",
              "/nonexistent/dir/x.png")
    one_line_error(res, "--plot /nonexistent/dir/x.png", "does not exist")


def test_replay_works_and_its_help_has_no_doubled_percent(trace: tuple[Path, Path], tmp_path: Path) -> None:
    nodes, pods = trace
    res = hcs("replay", "--nodes", str(nodes), "--pods", str(pods), "--seeds", "2", "--plot", str(tmp_path / "r.png"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert "\x1b[" not in res.stderr  # no progress bar when stderr is not a terminal
    helptext = hcs("replay", "--help").stdout
    assert "130%" in helptext and "%%" not in helptext


def test_bench_replay_missing_dir() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "replay.py"), "--dir", "/missing"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    one_line_error(res, "--dir /missing", "missing", "Traces")


# ----------------------------------------------------------------------------- settings


def test_invalid_log_level_flag() -> None:
    one_line_error(hcs("--log-level", "bogus", "inspect"), "--log-level", "bogus", max_lines=4)


def test_invalid_log_level_env() -> None:
    one_line_error(hcs("inspect", env={"HCS_LOG_LEVEL": "loud"}), "HCS_LOG_LEVEL 'loud'", "debug, info")


def test_log_level_is_case_insensitive() -> None:
    assert hcs("--log-level", "DEBUG", "inspect", "--list-profiles").returncode == 0
    assert hcs("inspect", "--list-profiles", env={"HCS_LOG_LEVEL": "Warning"}).returncode == 0


def test_demo_negative_burst() -> None:
    one_line_error(hcs("demo", "--burst", "-1"), "--burst", "negative", max_lines=4)


def test_demo_unwritable_plot_fails_before_starting_anything() -> None:
    res = hcs("demo", "--plot", "/nonexistent/dir/x.png")
    one_line_error(res, "--plot /nonexistent/dir/x.png", "does not exist")
    assert "Starting" not in res.stdout


def test_demo_unusable_workdir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(hcs("demo", "--workdir", str(blocker)), "--workdir", "not a directory")


# ----------------------------------------------------------------------------- profiles


@needs_sim
def test_profile_with_unknown_field_is_one_error(tmp_path: Path) -> None:
    prof = tmp_path / "p.json"
    prof.write_text('{"devices": [{"vendor": "nvidia", "model": "T4", "uuid": "GPU-1", "pci_bus_id": "0000:3b:00.0",'
                    ' "memory_mib": 15360, "numa_node": 0, "bogus": 1}]}')
    res = hcs("inspect", "--profile", str(prof))
    one_line_error(res, "devices[0].bogus: unknown field")
    assert "No accelerators found" not in res.stdout


def test_profile_invalid_json_and_unknown_name(tmp_path: Path) -> None:
    prof = tmp_path / "p.json"
    prof.write_text("{not json")
    one_line_error(hcs("inspect", "--profile", str(prof)), "not valid JSON")
    one_line_error(hcs("inspect", "--profile", "no-such-node"), "no-such-node", "a100-80g-nvlink-8",
                   "--list-profiles")


@needs_sim
def test_profile_by_bare_name_and_listing() -> None:
    listing = hcs("inspect", "--list-profiles")
    assert listing.returncode == 0 and "a100-80g-nvlink-8" in listing.stdout and "t4-pcie-4" in listing.stdout
    res = hcs("inspect", "--profile", "t4-pcie-4")
    assert res.returncode == 0, res.stderr
    rows = [ln.split() for ln in res.stdout.splitlines() if ln.startswith("nvidia-")]
    assert len(rows) == 4
    for row in rows:
        # DEVICE MODEL VRAM USED FP16* NUMA PCI ISLAND HEALTH
        assert row[3] == "0Gi" and row[4] == "65" and row[5] in ("0", "1") and row[-1] == "ok", row


@needs_sim
def test_unknown_numa_is_not_shown_as_minus_one() -> None:
    res = hcs("inspect", "--profile", "ascend-910b-hccs-8")
    assert res.returncode == 0, res.stderr
    rows = [ln.split() for ln in res.stdout.splitlines() if ln.startswith("ascend-")]
    assert rows and all(r[5] in ("0", "1", "?") for r in rows), rows
    if any(r[5] == "?" for r in rows):
        assert "NUMA ?:" in res.stdout


def test_inspect_without_hardware_mentions_profile() -> None:
    res = hcs("inspect")
    if "No accelerators found" not in res.stdout:
        pytest.skip("this machine has accelerator libraries")
    assert res.returncode == 0
    assert "--profile" in res.stdout


# ----------------------------------------------------------------------------- conveniences


def test_version_short_and_long() -> None:
    from hcs import __version__

    for flag in ("-V", "--version"):
        res = hcs(flag)
        assert res.returncode == 0 and res.stdout.strip() == f"hcs {__version__}"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_shell_completion_script(shell: str) -> None:
    res = hcs("--print-completion", shell)
    assert res.returncode == 0, res.stderr
    assert "inspect" in res.stdout and "demo" in res.stdout and "--list-profiles" in res.stdout


def test_every_subcommand_help_has_a_description() -> None:
    for cmd in ("inspect", "node", "allocator", "alloc", "replay", "webhook", "demo"):
        res = hcs(cmd, "--help")
        assert res.returncode == 0, (cmd, res.stderr)
        body = res.stdout.split("\n\n", 2)
        assert len(body) >= 2 and not body[1].lstrip().startswith(("options:", "positional")), (cmd, res.stdout)


def test_unexpected_exception_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import hcs.devices.cli as inspect_cli
    from hcs.cli import main

    def boom(_args: object) -> int:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(inspect_cli, "run", boom)
    assert main(["inspect"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hcs inspect: error: unexpected RuntimeError: disk on fire (run with --log-level debug for the "
                   "traceback, and please report it)"]


def _stderr_on_a_terminal(args: list[str]) -> tuple[int, bytes]:
    """Run ``hcs ARGS`` with stderr on a pseudo-terminal (as in an interactive shell); (rc, what it drew)."""
    import pty
    import select

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCS_")}
    env["TERM"] = "xterm"
    proc = subprocess.Popen([str(HCS), *args], stdout=subprocess.DEVNULL, stderr=slave, env=env, cwd=ROOT)
    os.close(slave)
    drawn = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            drawn += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=60), drawn


def test_replay_progress_bar_on_a_terminal_only_for_people(trace: tuple[Path, Path]) -> None:
    nodes, pods = trace
    rc, drawn = _stderr_on_a_terminal(["replay", "--nodes", str(nodes), "--pods", str(pods), "--seeds", "3"])
    assert rc == 0 and b"replay" in drawn and b"/3" in drawn, drawn[:400]  # "0/3 ... 3/3"
    rc, drawn = _stderr_on_a_terminal(["replay", "--nodes", str(nodes), "--pods", str(pods), "--seeds", "3",
                                       "--output", "json"])
    assert rc == 0 and b"/3" not in drawn, drawn[:400]


def test_binary_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_bytes(b"\xff\xfe\x80\x81 not text")
    one_line_error(hcs("inspect", "--config", str(cfg)), "not UTF-8 text")
