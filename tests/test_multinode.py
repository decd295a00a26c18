"""Two nodes on one machine, each started by the DeepSpeed launcher without ssh, gloo across a veth link."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from tests.conftest import PROJECT_ROOT, VENV_BIN, free_port
from tests.hosts import namespaces_left, two_hosts
from tests.training_runs import PRESET, deepspeed_command, final_weights, overrides, run_env

DEEPSPEED = VENV_BIN / "deepspeed"


def _node_command(node, node_rank, master, port, hostfile, root, out):
    """``deepspeed --no_ssh --node_rank K`` for one node of the hostfile, run inside that node's namespace."""
    launcher = [
        *node.prefix,
        "env",
        f"GLOO_SOCKET_IFNAME={node.interface}",
        str(DEEPSPEED),
        "--hostfile",
        str(hostfile),
        "--no_ssh",
        "--node_rank",
        str(node_rank),
        "--master_addr",
        master.address,
        "--master_port",
        str(port),
        str(PROJECT_ROOT / "launchers" / "train.py"),
    ]
    return [*launcher, "--config", str(PRESET), *overrides(root, **{"train.output_dir": out})]


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_nodes_train_to_the_weights_of_one_node_with_two_ranks(tmp_path, capsys):
    """Each node runs one CPU rank under its own DeepSpeed launcher; DRCDown every epoch, evaluation,
    checkpoints and the export; the final weights equal a two-rank single-node run of the same config.
    The shard sets lie on each node's own disk (``data.shard_storage: node-local``, a folder per node),
    the run folder on the shared path."""
    if not DEEPSPEED.is_file():
        pytest.skip(f"{DEEPSPEED} not found (run through make test)")
    env = run_env() | {"OMP_NUM_THREADS": "1"}
    single = deepspeed_command(tmp_path, free_port(), **{"train.output_dir": tmp_path / "one-node"})
    completed = subprocess.run(single, cwd=tmp_path, env=env, timeout=300, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    tag = f"dsn{os.getpid() % 100000}"
    disks = [tmp_path / f"disk{rank}" for rank in range(2)]  # each node's own disk; the run folder is shared
    for disk in disks:
        disk.mkdir()
    local = {
        "data.shard_storage": "node-local",
        "train.shard_set": "shards/smoke-train",  # relative: each node's own copy under its working directory
        "train.targets": "[smoke-test=shards/smoke-test]",
    }
    with two_hosts(tag) as hosts:
        processes = _start_nodes(
            hosts, hostfile, tmp_path, tmp_path / "two-nodes", free_port(), env, disks=disks, **local
        )
        outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert not namespaces_left(tag), "a namespace survived the test"
    with capsys.disabled():
        print(f"\ntwo-node test ran over: {hosts.kind}")
    _assert_every_node_succeeded(processes, outputs)

    two_dir, one_dir = tmp_path / "two-nodes" / "cpu-smoke", tmp_path / "one-node" / "cpu-smoke"
    tag_two, weights_two = final_weights(two_dir)
    tag_one, weights_one = final_weights(one_dir)
    assert tag_two == tag_one
    assert weights_two.keys() == weights_one.keys()
    for name, value in weights_one.items():
        assert torch.equal(weights_two[name], value), name
    assert (two_dir / "export" / "model_fp32.pt").is_file()
    for disk in disks:  # each node built and hashed its own copy of every set
        for name in ("smoke-train", "smoke-test"):
            assert (disk / "shards" / name / ".verified-shards.json").is_file(), f"{disk.name}/{name} not verified"
    pinned = json.loads((two_dir / "shard_sets.json").read_text())
    assert set(pinned) == {"train", "target smoke-test"}
    for keep_list in sorted((one_dir / "keep_lists").iterdir()):
        assert (two_dir / "keep_lists" / keep_list.name).read_bytes() == keep_list.read_bytes()


def _slurm_task_env(node, node_id: int, hostlist: str, port: int, job_dir) -> dict[str, str]:
    """What srun would give one task of a two-node allocation (there is no slurmd here: faked)."""
    return run_env() | {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": hostlist,
        "SLURM_NNODES": "2",
        "SLURM_NODEID": str(node_id),
        "SLURM_PROCID": str(node_id),
        "SLURM_SUBMIT_DIR": str(PROJECT_ROOT),
        "RANKS_PER_NODE": "1",
        "MASTER_PORT": str(port),
        "DIST_SYNDR_JOB_DIR": str(job_dir),
        "GLOO_SOCKET_IFNAME": node.interface,
        "OMP_NUM_THREADS": "1",
    }


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_nodes_shard_through_the_slurm_node_script_byte_identical_to_one_process(tmp_path, capsys):
    """``launchers/slurm/node.sh shard`` as two Slurm tasks (faked SLURM_* environment), one per node: the
    node list names the two nodes' addresses, the first is the rendezvous; the set equals one process's."""
    from launchers import shard as shard_launcher
    from tests.test_shard_step import _pristine_folder, _set_files, undistorted_folder_overrides

    _pristine_folder(tmp_path / "pristine", count=9)
    common = undistorted_folder_overrides(tmp_path / "pristine")
    config = str(PROJECT_ROOT / "configs" / "shard" / "folder-weak.yaml")
    assert shard_launcher.main(["--config", config, *common, f"shard.output_root={tmp_path / 'one'}"]) == 0
    tag = f"dss{os.getpid() % 100000}"
    with two_hosts(tag) as hosts:
        hostlist = ",".join(node.address for node in hosts.nodes)
        if hosts.nodes[0].address == hosts.nodes[1].address:
            hostlist = "localhost,127.0.0.1"  # two names for this machine: the fallback path
        port = free_port()
        tasks = [
            _start_node(
                [
                    *node.prefix,
                    "bash",
                    str(PROJECT_ROOT / "launchers" / "slurm" / "node.sh"),
                    "shard",
                    config,
                    *common,
                    f"shard.output_root={tmp_path / 'two'}",
                ],
                tmp_path,
                _slurm_task_env(node, node_id, hostlist, port, tmp_path / "job"),
            )
            for node_id, node in enumerate(hosts.nodes)
        ]
        outputs = [task.communicate(timeout=240)[0] for task in tasks]
    assert not namespaces_left(tag), "a namespace survived the test"
    with capsys.disabled():
        print(f"\ntwo-node sharding ran over: {hosts.kind}")
    _assert_every_node_succeeded(tasks, outputs)
    for node_id, output in enumerate(outputs):
        assert f"node {node_id} of 2: 1 rank(s), rendezvous at {hostlist.split(',')[0]}" in output
    one, two = tmp_path / "one" / "folder-weak", tmp_path / "two" / "folder-weak"
    assert _set_files(one) == _set_files(two)  # the lock files name different jobs
    assert (tmp_path / "job" / "hostfile.1").read_text() == "".join(f"{h} slots=1\n" for h in hostlist.split(","))


def test_slurm_host_lists_expand_like_scontrol():
    import runpy

    expand_hostlist = runpy.run_path(str(PROJECT_ROOT / "launchers" / "slurm" / "hostnames.py"))["expand_hostlist"]

    assert expand_hostlist("node[01-03,7],gpu-a") == ["node01", "node02", "node03", "node7", "gpu-a"]
    assert expand_hostlist("r[1-2]n[08-09]") == ["r1n08", "r1n09", "r2n08", "r2n09"]
    assert expand_hostlist("10.0.0.1,10.0.0.2") == ["10.0.0.1", "10.0.0.2"]
    for bad in ("node[1-", "node[3-1]", "node[a-b]", ""):
        with pytest.raises(ValueError):
            expand_hostlist(bad)


def _start_nodes(hosts, hostfile, root, out, port, env, *, disks=None, **overrides):
    """One DeepSpeed launcher per node; with ``disks`` node K runs in ``disks[K]`` (its local disk)."""
    master = hosts.nodes[0]
    processes = []
    for rank, node in enumerate(hosts.nodes):
        command = _node_command(node, rank, master, port, hostfile, root, out)
        command += [f"{key}={value}" for key, value in overrides.items()]
        processes.append(_start_node(command, disks[rank] if disks else root, env))
    return processes


def _start_node(command, cwd, env) -> subprocess.Popen:
    """One node's command in its own session (a SIGKILL to its group takes the whole node), output captured."""
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _assert_every_node_succeeded(processes, outputs) -> None:
    for rank, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"node {rank}:\n{output[-3000:]}"


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_node_killed_mid_epoch_stops_the_other_then_both_resume_to_the_same_weights(tmp_path, capsys):
    """SIGKILL to node 1's launcher and rank mid-epoch: node 0 exits on its own within the bound, naming the
    lost peer; both restarted with resume=auto end with the weights of an uninterrupted run."""
    import signal
    import time

    from dist_syndr.cli import LOST_PEER_EXIT

    if not DEEPSPEED.is_file():
        pytest.skip(f"{DEEPSPEED} not found (run through make test)")
    env = run_env() | {"OMP_NUM_THREADS": "1"}
    common = {"train.checkpoint_every_steps": 1, "data.batch_size": 4, "runtime.collective_timeout_s": 60}
    straight = deepspeed_command(tmp_path, free_port(), **common, **{"train.output_dir": tmp_path / "straight"})
    completed = subprocess.run(straight, cwd=tmp_path, env=env, timeout=300, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    tag = f"dsk{os.getpid() % 100000}"
    out = tmp_path / "killed"
    pointer = out / "cpu-smoke" / "checkpoints" / "complete"
    with two_hosts(tag) as hosts:
        processes = _start_nodes(hosts, hostfile, tmp_path, out, free_port(), env, **common)
        deadline = time.monotonic() + 240
        while not (pointer.is_file() and json.loads(pointer.read_text())["tag"].startswith("epoch0001-step")):
            assert all(p.poll() is None for p in processes) and time.monotonic() < deadline, "no mid-epoch checkpoint"
            time.sleep(0.05)
        os.killpg(processes[1].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        survivor_output = processes[0].communicate(timeout=120)[0]
        stopped_after = time.monotonic() - killed_at
        processes[1].communicate(timeout=30)
        assert processes[0].returncode != 0, survivor_output[-3000:]
        assert "a collective lost its peer" in survivor_output, survivor_output[-3000:]
        assert f"exits with return code = {LOST_PEER_EXIT}" in survivor_output, survivor_output[-3000:]
        assert not (out / "cpu-smoke" / "checkpoints" / "epoch0001").exists(), "killed too late: epoch 1 had finished"

        restarted = _start_nodes(hosts, hostfile, tmp_path, out, free_port(), env, **common)
        outputs = [process.communicate(timeout=300)[0] for process in restarted]
    assert not namespaces_left(tag), "a namespace survived the test"
    with capsys.disabled():
        print(f"\nnode death over {hosts.kind}: the survivor stopped {stopped_after:.1f} s after the SIGKILL")
    assert stopped_after < 90
    _assert_every_node_succeeded(restarted, outputs)
    assert "resumed from epoch0001-step" in outputs[0]
    tag_resumed, resumed = final_weights(out / "cpu-smoke")
    tag_straight, reference = final_weights(tmp_path / "straight" / "cpu-smoke")
    assert tag_resumed == tag_straight
    for name, value in reference.items():
        assert torch.equal(resumed[name], value), name


def test_a_lost_peer_is_one_line_naming_it():
    from dist_syndr import cli

    gloo = RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [10.3.45.2]:44764: "
        "Connection reset by peer. This is typically caused by a remote worker hanging"
    )
    assert cli.is_lost_peer(gloo) and "[10.3.45.2]:44764" in cli.lost_peer_message(gloo)
    assert "resume=auto" in cli.lost_peer_message(gloo)
    assert not cli.is_lost_peer(RuntimeError("CUDA out of memory"))
